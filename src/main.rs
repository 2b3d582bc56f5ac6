//! The `kafflow` command line: parse, build the config, call into the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use kafflow::client::ops::{self, Conn};
use kafflow::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "kafflow",
    version,
    about = "A governed gateway for Apache Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the service.
    Serve {
        /// The config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Address to listen on (default 127.0.0.1:8080; port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Address of the TCP ingest listener (default 127.0.0.1:7070; port 0 picks a free port).
        #[arg(long)]
        ingest_listen: Option<SocketAddr>,
        /// Where the event log lives.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Kafka bootstrap servers (default 127.0.0.1:9092).
        #[arg(long)]
        bootstrap_servers: Option<String>,
        /// PEM certificate chain: with --tls-key, both listeners speak TLS only
        /// (overrides `[server] tls_cert`).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert (overrides `[server] tls_key`).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Address of the Kafka-protocol gateway for Kafka clients (overrides
        /// `[gateway] listen`; port 0 picks a free port). Off when neither is set.
        #[arg(long)]
        gateway_listen: Option<SocketAddr>,
    },
    /// The audit trail: list it, or verify the hash chain (against a server, or offline).
    Audit {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: ops::AuditCmd,
    },
    /// Topics: list, get, request, delete.
    Topics {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: ops::TopicsCmd,
    },
    /// Create and delete requests: list, get, approve, reject, withdraw.
    Requests {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: ops::RequestsCmd,
    },
    /// Access requests: request, list, get, approve, reject, withdraw.
    Access {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: ops::AccessCmd,
    },
    /// Grants: list, revoke.
    Grants {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: ops::GrantsCmd,
    },
    /// Held records and dead letters: list, export, discard.
    Held {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        command: ops::HeldCmd,
    },
    /// What Kafka has that KafFlow does not, and the other way round.
    Drift {
        #[command(flatten)]
        conn: Conn,
    },
    /// Shell completions: `kafflow completions bash > /etc/bash_completion.d/kafflow`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the hex SHA-256 of a token, for `token_sha256` in the config.
    HashToken { token: String },
    /// Send stdin lines as records to a topic through the TCP ingest listener.
    Produce {
        /// The topic to produce to.
        #[arg(long)]
        topic: String,
        /// The TCP ingest listener: tcp://HOST:PORT, or tls://HOST:PORT when it speaks TLS.
        #[arg(long, env = "KAFFLOW_INGEST", default_value = "tcp://127.0.0.1:7070")]
        ingest: String,
        /// The HTTP API, as for every command: the held count, and --request.
        #[arg(
            long,
            alias = "api",
            env = "KAFFLOW_SERVER",
            default_value = "http://127.0.0.1:8080"
        )]
        server: String,
        /// File a create request for the topic (the policy's defaults) if KafFlow does not
        /// know it; its records are then held until an admin approves it.
        #[arg(long)]
        request: bool,
        /// A producer's bearer token.
        #[arg(long, env = "KAFFLOW_TOKEN", hide_env_values = true)]
        token: String,
        /// PEM certificates to trust for tls:// and https:// (default: the public web's roots).
        #[arg(long, env = "KAFFLOW_CA_CERT")]
        ca_cert: Option<PathBuf>,
        /// raw: each line's bytes are the value, as they are. json: each line is one JSON
        /// value, sent as written.
        #[arg(long, value_enum, default_value = "raw")]
        format: kafflow::client::produce::Format,
        /// With --format json: the key is this field of each line's object.
        #[arg(long, conflicts_with = "key_separator")]
        key_field: Option<String>,
        /// The key is the part of each line before SEP, the value the rest (kcat's -K); a
        /// line without SEP has no key.
        #[arg(long, value_name = "SEP")]
        key_separator: Option<String>,
    },
    /// Issue, list and revoke bearer tokens (needs an admin's token).
    Token {
        /// The KafFlow service.
        #[arg(
            long,
            env = "KAFFLOW_SERVER",
            default_value = "http://127.0.0.1:8080",
            global = true
        )]
        server: String,
        /// An admin's bearer token.
        #[arg(long, env = "KAFFLOW_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Subscribe to topics and print their records as NDJSON (runs until the feed ends).
    Consume {
        /// A topic to subscribe to and print (repeat for several).
        #[arg(long = "topic", required = true)]
        topics: Vec<String>,
        /// The KafFlow service: http://HOST:PORT, or https://HOST:PORT when it speaks TLS.
        #[arg(long, env = "KAFFLOW_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// A consumer's bearer token.
        #[arg(long, env = "KAFFLOW_TOKEN", hide_env_values = true)]
        token: String,
        /// Where to start: committed (where this user left off), earliest or latest.
        #[arg(long, default_value = "committed", value_parser = ["committed", "earliest", "latest"])]
        from: String,
        /// PEM certificates to trust for https:// (default: the public web's roots).
        #[arg(long, env = "KAFFLOW_CA_CERT")]
        ca_cert: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Issue a token; prints its details, and the token alone on the last line.
    Create {
        /// The name the token signs in as.
        #[arg(long)]
        name: String,
        /// A role of the token: admin, producer or consumer (repeat for several).
        #[arg(long = "role", required = true, value_parser = ["admin", "producer", "consumer"])]
        roles: Vec<String>,
        /// Days until the token expires (default: never).
        #[arg(long)]
        expires_in_days: Option<i64>,
    },
    /// List the issued tokens, without their secrets.
    List,
    /// Revoke a token by its id; it is refused from then on.
    Revoke { id: String },
}

fn produce(options: kafflow::client::produce::Options) -> ExitCode {
    match kafflow::client::produce::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve {
            config,
            listen,
            ingest_listen,
            data_dir,
            bootstrap_servers,
            tls_cert,
            tls_key,
            gateway_listen,
        } => serve(
            config,
            Overrides {
                listen,
                ingest_listen,
                data_dir,
                bootstrap_servers,
                tls_cert,
                tls_key,
                gateway_listen,
            },
        ),
        Cmd::Audit {
            command: ops::AuditCmd::Verify {
                data_dir: Some(data_dir),
            },
            ..
        } => match kafflow::events::verify(&data_dir) {
            Ok(head) => {
                println!("ok: {} events, head {}", head.seq, head.hash);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Cmd::Audit { conn, command } => operate(conn, ops::Action::Audit(command)),
        Cmd::Topics { conn, command } => operate(conn, ops::Action::Topics(command)),
        Cmd::Requests { conn, command } => operate(conn, ops::Action::Requests(command)),
        Cmd::Access { conn, command } => operate(conn, ops::Action::Access(command)),
        Cmd::Grants { conn, command } => operate(conn, ops::Action::Grants(command)),
        Cmd::Held { conn, command } => operate(conn, ops::Action::Held(command)),
        Cmd::Drift { conn } => operate(conn, ops::Action::Drift),
        Cmd::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "kafflow", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::HashToken { token } => {
            println!("{}", kafflow::identity::token_sha256(&token));
            ExitCode::SUCCESS
        }
        Cmd::Produce {
            topic,
            ingest,
            server,
            request,
            token,
            ca_cert,
            format,
            key_field,
            key_separator,
        } => {
            if key_field.is_some() && format != kafflow::client::produce::Format::Json {
                <Cli as clap::CommandFactory>::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--key-field reads a field of a JSON object: it needs --format json",
                    )
                    .exit();
            }
            produce(kafflow::client::produce::Options {
                ingest,
                server,
                token,
                topic,
                request,
                ca_cert,
                shape: kafflow::client::produce::Shape {
                    format,
                    key_field,
                    key_separator,
                },
            })
        }
        Cmd::Token {
            server,
            token,
            command,
        } => {
            let Some(token) = token else {
                return fail(&"an admin token is needed: --token TOKEN or KAFFLOW_TOKEN");
            };
            let action = match command {
                TokenCmd::Create {
                    name,
                    roles,
                    expires_in_days,
                } => kafflow::client::token::Action::Create {
                    name,
                    roles,
                    expires_in_days,
                },
                TokenCmd::List => kafflow::client::token::Action::List,
                TokenCmd::Revoke { id } => kafflow::client::token::Action::Revoke { id },
            };
            match kafflow::client::token::run(kafflow::client::token::Options {
                server,
                token,
                action,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Cmd::Consume {
            topics,
            server,
            token,
            from,
            ca_cert,
        } => match kafflow::client::consume::run(kafflow::client::consume::Options {
            server,
            token,
            topics,
            from,
            ca_cert,
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
    }
}

/// An operator command: 0 done, 1 refused or failed (the API's code on stderr).
fn operate(conn: Conn, action: ops::Action) -> ExitCode {
    match ops::run(conn, action) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("kafflow: error: {error}");
    ExitCode::FAILURE
}

fn serve(path: PathBuf, overrides: Overrides) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match Config::load(&path, overrides) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let system = actix::System::new();
    let result = system.block_on(kafflow::serve(
        config,
        |bound| {
            let mut out = std::io::stdout();
            let (tcp, http) = if bound.tls {
                ("tls", "https")
            } else {
                ("tcp", "http")
            };
            let _ = writeln!(out, "ingest on {tcp}://{}", bound.ingest);
            if let Some(gateway) = bound.gateway {
                let scheme = if bound.tls { "kafka+tls" } else { "kafka" };
                let _ = writeln!(out, "gateway on {scheme}://{gateway}");
            }
            let _ = writeln!(out, "listening on {http}://{}", bound.http);
            let _ = out.flush();
        },
        shutdown_signal(),
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The service ran and had to stop (EX_SOFTWARE): replay at the next start restores it.
        Err(e @ kafflow::StartError::Fatal(_)) => {
            eprintln!("kafflow: error: {e}");
            ExitCode::from(70)
        }
        Err(e) => fail(&e),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("Signal received.");
}
