//! `kafflow token create | list | revoke`: the issued tokens of a running service, over its
//! HTTP API, with an admin's token.

use std::io::Write;

use serde::Deserialize;

/// What `kafflow token` was asked for.
#[derive(Debug, Clone)]
pub enum Action {
    Create {
        name: String,
        roles: Vec<String>,
        expires_in_days: Option<i64>,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Base URL of the service, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// An admin's token.
    pub token: String,
    pub action: Action,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the server URL must start with http:// or https:// (got {0})")]
    BadServer(String),
    #[error("cannot start the client runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{status} {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the server: {0}")]
    Answer(String),
    #[error("cannot write to stdout: {0}")]
    Output(#[from] std::io::Error),
}

/// A token as the API shows it.
#[derive(Debug, Deserialize)]
struct TokenOut {
    id: String,
    name: String,
    roles: Vec<String>,
    status: String,
    expires_at: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// One page of `GET /tokens`.
#[derive(Debug, Deserialize)]
struct TokensPage {
    tokens: Vec<TokenOut>,
    next: Option<String>,
}

/// Runs the command on a runtime of its own, printing to stdout.
pub fn run(options: Options) -> Result<(), TokenError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(TokenError::Runtime)?;
    let stdout = std::io::stdout();
    runtime.block_on(token(&options, &mut stdout.lock()))
}

pub async fn token(options: &Options, out: &mut impl Write) -> Result<(), TokenError> {
    let base = options.server.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(TokenError::BadServer(base.to_string()));
    }
    let http = reqwest::Client::new();
    let url = format!("{base}/api/v1/tokens");
    match &options.action {
        Action::Create {
            name,
            roles,
            expires_in_days,
        } => {
            let body = serde_json::json!({
                "name": name,
                "roles": roles,
                "expires_in_days": expires_in_days,
            });
            let request = http.post(&url).json(&body);
            let created: TokenOut = call(request, &url, &options.token).await?;
            writeln!(out, "id: {}", created.id)?;
            writeln!(out, "name: {}", created.name)?;
            writeln!(out, "roles: {}", created.roles.join(","))?;
            writeln!(
                out,
                "expires: {}",
                created.expires_at.as_deref().unwrap_or("never")
            )?;
            let secret = created
                .token
                .ok_or_else(|| TokenError::Answer("no token in the reply".into()))?;
            // Alone on the last line, for `| tail -n 1`.
            writeln!(out, "{secret}")?;
        }
        Action::List => {
            // Page after page, each printed as it comes, until the list says it is done.
            let mut after: Option<String> = None;
            loop {
                let mut query = vec![("limit", "1000".to_string())];
                query.extend(after.take().map(|a| ("after", a)));
                let request = http.get(&url).query(&query);
                let page: TokensPage = call(request, &url, &options.token).await?;
                for t in page.tokens {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\texpires {}",
                        t.id,
                        t.name,
                        t.roles.join(","),
                        t.status,
                        t.expires_at.as_deref().unwrap_or("never")
                    )?;
                }
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        Action::Revoke { id } => {
            let url = format!("{url}/{id}");
            let revoked: TokenOut = call(http.delete(&url), &url, &options.token).await?;
            writeln!(out, "revoked {}", revoked.id)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Sends the request with the admin's token; a non-2xx answer becomes `Refused`.
async fn call<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    url: &str,
    token: &str,
) -> Result<T, TokenError> {
    let response =
        request
            .bearer_auth(token)
            .send()
            .await
            .map_err(|source| TokenError::Unreachable {
                url: url.to_string(),
                source,
            })?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        let parsed: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v["error"][name].as_str().map(str::to_string))
        };
        return Err(TokenError::Refused {
            status: status.as_u16(),
            code: field("code").unwrap_or_else(|| "error".into()),
            message: field("message").unwrap_or_else(|| body.trim().to_string()),
        });
    }
    serde_json::from_str(&body).map_err(|e| TokenError::Answer(e.to_string()))
}
