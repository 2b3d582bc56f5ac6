//! The operator commands: every action of the HTTP API from the command line, as `kubectl`
//! and `kafka-topics.sh` users expect. `kafflow topics|requests|access|grants|held|audit|drift`.
//!
//! Human tables by default, `-o json` for scripts (one JSON document: a list is every page of
//! it, followed through `next`). Exit codes: 0 done, 1 refused (the API's error code and
//! message on stderr), 2 usage (clap's own).

use std::io::Write;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::tls::{self, TlsError};

/// How the answer is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Where the API is and who calls it; shared by every operator command.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// The KafFlow HTTP API: http://HOST:PORT, or https://HOST:PORT.
    #[arg(
        long,
        env = "KAFFLOW_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// A bearer token.
    #[arg(long, env = "KAFFLOW_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM certificates to trust for https:// (default: the public web's roots).
    #[arg(long, env = "KAFFLOW_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// table (default) or json.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub output: Output,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TopicsCmd {
    /// The topics KafFlow knows, active or not.
    List,
    /// One topic (also one whose create request waits).
    Get { name: String },
    /// Ask for a topic; an admin approves or rejects the request.
    Request {
        name: String,
        #[arg(long)]
        partitions: Option<u32>,
        #[arg(long)]
        replication_factor: Option<u32>,
        /// A Kafka topic config, KEY=VALUE (repeat for several).
        #[arg(long = "config", value_parser = key_value)]
        configs: Vec<(String, String)>,
        /// open or restricted.
        #[arg(long, value_parser = ["open", "restricted"])]
        visibility: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Ask for a topic's deletion (owner or admin); an admin decides it.
    Delete {
        name: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum RequestsCmd {
    /// Create and delete requests, oldest first.
    List {
        /// pending, approved, completed, failed, rejected or withdrawn.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        requested_by: Option<String>,
    },
    /// One create or delete request, with its decision.
    Get { id: String },
    /// Approve (admin, not one's own request).
    Approve {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Reject with a reason (admin, not one's own request).
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Withdraw one's own pending request.
    Withdraw { id: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AccessCmd {
    /// Ask for produce or consume access to a topic.
    Request {
        #[arg(long)]
        topic: String,
        #[arg(long, value_parser = ["produce", "consume"])]
        access: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Access requests, oldest first.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        topic: Option<String>,
    },
    /// One access request, with its decision.
    Get { id: String },
    /// Approve (the topic's owner or an admin).
    Approve {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Reject with a reason (the topic's owner or an admin).
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Withdraw one's own pending access request.
    Withdraw { id: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum GrantsCmd {
    /// Who may produce to or consume from which topic.
    List {
        #[arg(long)]
        topic: Option<String>,
    },
    /// Revoke a grant by its id.
    Revoke { id: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum HeldCmd {
    /// Records held for a topic (or dead letters with --dead).
    List {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        dead: bool,
    },
    /// Every record as NDJSON on stdout (the records stay where they are).
    Export {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        dead: bool,
    },
    /// Discard a topic's dead letters (admin).
    Discard {
        #[arg(long)]
        topic: String,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCmd {
    /// The audit trail, every page: oldest first, or newest first with --order desc.
    List {
        #[arg(long)]
        topic: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// asc (oldest first, the default) or desc (newest first).
        #[arg(long, value_parser = ["asc", "desc"])]
        order: Option<String>,
    },
    /// Check the hash chain: against a server, or offline with --data-dir.
    Verify {
        /// The data dir of a stopped KafFlow: verify its event log here, without a server.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// What an operator command asked for.
#[derive(Debug, Clone)]
pub enum Action {
    Topics(TopicsCmd),
    Requests(RequestsCmd),
    Access(AccessCmd),
    Grants(GrantsCmd),
    Held(HeldCmd),
    Audit(AuditCmd),
    Drift,
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("cannot start the client runtime: {0}")]
    Runtime(std::io::Error),
    #[error("--server is the HTTP API and wants http://HOST:PORT or https://HOST:PORT (got {0})")]
    BadServer(String),
    #[error("a token is needed: --token TOKEN or KAFFLOW_TOKEN")]
    NoToken,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{server}: {source}")]
    Http {
        server: String,
        source: reqwest::Error,
    },
    /// The API refused: its status, error code and message.
    #[error("{code}: {message} (HTTP {status})")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot write the answer: {0}")]
    Output(std::io::Error),
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// Runs `action` against the API of `conn`.
pub fn run(conn: Conn, action: Action) -> Result<(), OpsError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(OpsError::Runtime)?;
    runtime.block_on(async move {
        let api = Api::new(&conn)?;
        let out = conn.output;
        match action {
            Action::Topics(cmd) => topics(&api, out, cmd).await,
            Action::Requests(cmd) => requests(&api, out, cmd).await,
            Action::Access(cmd) => access(&api, out, cmd).await,
            Action::Grants(cmd) => grants(&api, out, cmd).await,
            Action::Held(cmd) => held(&api, out, cmd).await,
            Action::Audit(cmd) => audit(&api, out, cmd).await,
            Action::Drift => {
                let drift = api.call(reqwest::Method::GET, "/drift", None).await?;
                print_one(out, &drift)
            }
        }
    })
}

struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    fn new(conn: &Conn) -> Result<Api, OpsError> {
        let base = conn.server.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(OpsError::BadServer(conn.server.clone()));
        }
        Ok(Api {
            base: base.to_string(),
            token: conn.token.clone().ok_or(OpsError::NoToken)?,
            client: tls::http_client(conn.ca_cert.as_deref())?,
        })
    }

    /// One call; a non-2xx answer is the API's refusal.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, OpsError> {
        let mut request = self
            .client
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let failed = |source| OpsError::Http {
            server: self.base.clone(),
            source,
        };
        let reply = request.send().await.map_err(failed)?;
        let status = reply.status();
        let text = reply.text().await.map_err(failed)?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        Err(OpsError::Refused {
            status: status.as_u16(),
            code: body["error"]["code"]
                .as_str()
                .unwrap_or("http_error")
                .to_string(),
            message: body["error"]["message"]
                .as_str()
                .unwrap_or(status.canonical_reason().unwrap_or(""))
                .to_string(),
        })
    }

    /// Every page of a list route: `items` of each answer, following `next` as `after`.
    async fn list(
        &self,
        path: &str,
        query: &[(&str, Option<&str>)],
        items: &str,
    ) -> Result<Vec<Value>, OpsError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut pairs: Vec<(&str, &str)> = query
                .iter()
                .filter_map(|(k, v)| v.map(|v| (*k, v)))
                .collect();
            if let Some(after) = &after {
                pairs.push(("after", after));
            }
            let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
            let sep = if query.is_empty() { "" } else { "?" };
            let page = self
                .call(reqwest::Method::GET, &format!("{path}{sep}{query}"), None)
                .await?;
            match page {
                // A route that answers a bare array has one page.
                Value::Array(list) => {
                    all.extend(list);
                    return Ok(all);
                }
                page => {
                    if let Some(list) = page[items].as_array() {
                        all.extend(list.iter().cloned());
                    }
                    after = match &page["next"] {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    };
                    if after.is_none() {
                        return Ok(all);
                    }
                }
            }
        }
    }
}

fn path_segment(text: &str) -> String {
    // Topic names and ids are ASCII letters, digits, '.', '_' and '-'; anything else is
    // escaped so it cannot reach another route.
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn topics(api: &Api, out: Output, cmd: TopicsCmd) -> Result<(), OpsError> {
    use reqwest::Method;
    match cmd {
        TopicsCmd::List => {
            let list = api.list("/topics", &[], "topics").await?;
            print_list(
                out,
                &list,
                &[
                    ("NAME", "name"),
                    ("STATUS", "status"),
                    ("PARTITIONS", "partitions"),
                    ("VISIBILITY", "visibility"),
                    ("OWNER", "owner"),
                    ("HELD", "held"),
                    ("PUBLISHED", "published"),
                ],
            )
        }
        TopicsCmd::Get { name } => {
            let topic = api
                .call(
                    Method::GET,
                    &format!("/topics/{}", path_segment(&name)),
                    None,
                )
                .await?;
            print_one(out, &topic)
        }
        TopicsCmd::Request {
            name,
            partitions,
            replication_factor,
            configs,
            visibility,
            reason,
        } => {
            let mut body = json!({ "topic": name });
            if let Some(p) = partitions {
                body["partitions"] = json!(p);
            }
            if let Some(r) = replication_factor {
                body["replication_factor"] = json!(r);
            }
            if !configs.is_empty() {
                body["config"] = Value::Object(
                    configs
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                );
            }
            if let Some(v) = visibility {
                body["visibility"] = json!(v);
            }
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            let request = api
                .call(Method::POST, "/topic-requests", Some(body))
                .await?;
            print_one(out, &request)
        }
        TopicsCmd::Delete { name, reason } => {
            let request = api
                .call(
                    Method::POST,
                    &format!("/topics/{}/deletion-requests", path_segment(&name)),
                    Some(json!({ "reason": reason })),
                )
                .await?;
            print_one(out, &request)
        }
    }
}

const REQUEST_COLUMNS: &[(&str, &str)] = &[
    ("ID", "id"),
    ("KIND", "kind"),
    ("TOPIC", "topic"),
    ("STATUS", "status"),
    ("REQUESTED_BY", "requested_by"),
    ("REQUESTED_AT", "requested_at"),
    ("DECIDED_BY", "decided_by"),
];

async fn requests(api: &Api, out: Output, cmd: RequestsCmd) -> Result<(), OpsError> {
    use reqwest::Method;
    let decide = |id: &str, action: &str| format!("/topic-requests/{}/{action}", path_segment(id));
    let answer = match cmd {
        RequestsCmd::List {
            status,
            topic,
            requested_by,
        } => {
            let list = api
                .list(
                    "/topic-requests",
                    &[
                        ("status", status.as_deref()),
                        ("topic", topic.as_deref()),
                        ("requested_by", requested_by.as_deref()),
                    ],
                    "requests",
                )
                .await?;
            return print_list(out, &list, REQUEST_COLUMNS);
        }
        RequestsCmd::Get { id } => {
            api.call(
                Method::GET,
                &format!("/topic-requests/{}", path_segment(&id)),
                None,
            )
            .await?
        }
        RequestsCmd::Approve { id, note } => {
            let body = note
                .map(|n| json!({ "note": n }))
                .unwrap_or_else(|| json!({}));
            api.call(Method::POST, &decide(&id, "approve"), Some(body))
                .await?
        }
        RequestsCmd::Reject { id, reason } => {
            api.call(
                Method::POST,
                &decide(&id, "reject"),
                Some(json!({ "reason": reason })),
            )
            .await?
        }
        RequestsCmd::Withdraw { id } => {
            api.call(Method::POST, &decide(&id, "withdraw"), Some(json!({})))
                .await?
        }
    };
    print_one(out, &answer)
}

async fn access(api: &Api, out: Output, cmd: AccessCmd) -> Result<(), OpsError> {
    use reqwest::Method;
    let decide = |id: &str, action: &str| format!("/access-requests/{}/{action}", path_segment(id));
    let answer = match cmd {
        AccessCmd::Request {
            topic,
            access,
            reason,
        } => {
            let mut body = json!({ "topic": topic, "access": access });
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            api.call(Method::POST, "/access-requests", Some(body))
                .await?
        }
        AccessCmd::List { status, topic } => {
            let list = api
                .list(
                    "/access-requests",
                    &[("status", status.as_deref()), ("topic", topic.as_deref())],
                    "requests",
                )
                .await?;
            return print_list(
                out,
                &list,
                &[
                    ("ID", "id"),
                    ("TOPIC", "topic"),
                    ("ACCESS", "access"),
                    ("STATUS", "status"),
                    ("REQUESTED_BY", "requested_by"),
                    ("DECIDED_BY", "decided_by"),
                ],
            );
        }
        AccessCmd::Get { id } => {
            api.call(
                Method::GET,
                &format!("/access-requests/{}", path_segment(&id)),
                None,
            )
            .await?
        }
        AccessCmd::Approve { id, note } => {
            let body = note
                .map(|n| json!({ "note": n }))
                .unwrap_or_else(|| json!({}));
            api.call(Method::POST, &decide(&id, "approve"), Some(body))
                .await?
        }
        AccessCmd::Reject { id, reason } => {
            api.call(
                Method::POST,
                &decide(&id, "reject"),
                Some(json!({ "reason": reason })),
            )
            .await?
        }
        AccessCmd::Withdraw { id } => {
            api.call(Method::POST, &decide(&id, "withdraw"), Some(json!({})))
                .await?
        }
    };
    print_one(out, &answer)
}

async fn grants(api: &Api, out: Output, cmd: GrantsCmd) -> Result<(), OpsError> {
    match cmd {
        GrantsCmd::List { topic } => {
            let list = api
                .list("/grants", &[("topic", topic.as_deref())], "grants")
                .await?;
            print_list(
                out,
                &list,
                &[
                    ("ID", "id"),
                    ("TOPIC", "topic"),
                    ("USER", "user"),
                    ("ACCESS", "access"),
                    ("GRANTED_BY", "granted_by"),
                    ("GRANTED_AT", "granted_at"),
                ],
            )
        }
        GrantsCmd::Revoke { id } => {
            let answer = api
                .call(
                    reqwest::Method::DELETE,
                    &format!("/grants/{}", path_segment(&id)),
                    None,
                )
                .await?;
            print_one(out, &answer)
        }
    }
}

async fn held(api: &Api, out: Output, cmd: HeldCmd) -> Result<(), OpsError> {
    let state = |dead: bool| Some(if dead { "dead" } else { "held" });
    match cmd {
        HeldCmd::List { topic, dead } => {
            let list = api
                .list(
                    "/held",
                    &[("topic", Some(&topic)), ("state", state(dead))],
                    "records",
                )
                .await?;
            print_list(
                out,
                &list,
                &[
                    ("ID", "id"),
                    ("PRODUCER", "producer"),
                    ("PARTITION", "partition"),
                    ("KEY", "key"),
                    ("VALUE", "value"),
                    ("RECEIVED_AT", "received_at"),
                ],
            )
        }
        HeldCmd::Export { topic, dead } => {
            // Every page, one record per line: the export is NDJSON whatever -o says.
            let list = api
                .list(
                    "/held",
                    &[
                        ("topic", Some(&topic)),
                        ("state", state(dead)),
                        ("limit", Some("10000")),
                    ],
                    "records",
                )
                .await?;
            let mut stdout = std::io::stdout().lock();
            for record in list {
                writeln!(stdout, "{record}").map_err(OpsError::Output)?;
            }
            Ok(())
        }
        HeldCmd::Discard { topic } => {
            let query = serde_urlencoded::to_string([("topic", topic.as_str()), ("state", "dead")])
                .unwrap_or_default();
            let answer = api
                .call(reqwest::Method::DELETE, &format!("/held?{query}"), None)
                .await?;
            print_one(out, &answer)
        }
    }
}

async fn audit(api: &Api, out: Output, cmd: AuditCmd) -> Result<(), OpsError> {
    match cmd {
        AuditCmd::List {
            topic,
            actor,
            kind,
            since,
            until,
            order,
        } => {
            let list = api
                .list(
                    "/audit",
                    &[
                        ("topic", topic.as_deref()),
                        ("actor", actor.as_deref()),
                        ("kind", kind.as_deref()),
                        ("since", since.as_deref()),
                        ("until", until.as_deref()),
                        ("order", order.as_deref()),
                        ("limit", Some("1000")),
                    ],
                    "events",
                )
                .await?;
            print_list(
                out,
                &list,
                &[
                    ("SEQ", "seq"),
                    ("AT", "at"),
                    ("ACTOR", "actor"),
                    ("KIND", "kind"),
                    ("TOPIC", "topic"),
                    ("REQUEST", "request_id"),
                ],
            )
        }
        AuditCmd::Verify { .. } => {
            let answer = api
                .call(reqwest::Method::GET, "/audit/verify", None)
                .await?;
            print_one(out, &answer)
        }
    }
}

/// A cell: strings as they are, null as "-", anything else as compact JSON.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_list(out: Output, list: &[Value], columns: &[(&str, &str)]) -> Result<(), OpsError> {
    let mut stdout = std::io::stdout().lock();
    if out == Output::Json {
        return writeln!(stdout, "{}", Value::Array(list.to_vec())).map_err(OpsError::Output);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|item| {
            columns
                .iter()
                .map(|(_, field)| cell(&item[*field]))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (header, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain(std::iter::once(header.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(c);
            } else {
                text.push_str(&format!("{c:<width$}  ", width = widths[i]));
            }
        }
        text
    };
    writeln!(
        stdout,
        "{}",
        line(columns.iter().map(|(h, _)| *h).collect())
    )
    .map_err(OpsError::Output)?;
    for row in &rows {
        writeln!(stdout, "{}", line(row.iter().map(String::as_str).collect()))
            .map_err(OpsError::Output)?;
    }
    Ok(())
}

/// One object: `field: value` lines, or the JSON.
fn print_one(out: Output, value: &Value) -> Result<(), OpsError> {
    let mut stdout = std::io::stdout().lock();
    match (out, value) {
        (Output::Table, Value::Object(map)) => {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            for (key, v) in map {
                writeln!(stdout, "{key:<width$}  {}", cell(v)).map_err(OpsError::Output)?;
            }
            Ok(())
        }
        _ => writeln!(stdout, "{value}").map_err(OpsError::Output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_key_value() {
        assert_eq!(
            key_value("retention.ms=86400000"),
            Ok(("retention.ms".into(), "86400000".into()))
        );
        assert!(key_value("novalue").is_err());
        assert!(key_value("=x").is_err());
    }

    #[test]
    fn path_segments_cannot_leave_their_route() {
        assert_eq!(path_segment("orders.v1_x-y"), "orders.v1_x-y");
        assert_eq!(path_segment("../tokens"), "..%2Ftokens");
        assert_eq!(path_segment("a b?c"), "a%20b%3Fc");
    }

    #[test]
    fn cells_show_null_as_a_dash_and_strings_bare() {
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&json!("x")), "x");
        assert_eq!(cell(&json!(3)), "3");
    }
}
