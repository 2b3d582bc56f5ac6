//! The `kafflow` command line: parse, build the config, call into the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        /// Where the event log lives.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Kafka bootstrap servers (default 127.0.0.1:9092).
        #[arg(long)]
        bootstrap_servers: Option<String>,
    },
    /// Inspect the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
    /// Print the hex SHA-256 of a token, for `token_sha256` in the config.
    HashToken { token: String },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain of the event log and name the first bad seq.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve {
            config,
            listen,
            data_dir,
            bootstrap_servers,
        } => serve(
            config,
            Overrides {
                listen,
                data_dir,
                bootstrap_servers,
            },
        ),
        Cmd::Audit {
            command: AuditCmd::Verify { data_dir },
        } => match kafflow::events::verify(&data_dir) {
            Ok(head) => {
                println!("ok: {} events, head {}", head.seq, head.hash);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Cmd::HashToken { token } => {
            println!("{}", kafflow::identity::token_sha256(&token));
            ExitCode::SUCCESS
        }
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
        .init();
    let config = match Config::load(&path, overrides) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let system = actix::System::new();
    let result = system.block_on(kafflow::serve(
        config,
        |addr| {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "listening on http://{addr}");
            let _ = out.flush();
        },
        shutdown_signal(),
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
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
    tracing::info!("Shutting down.");
}
