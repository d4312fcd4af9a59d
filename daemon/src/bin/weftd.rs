//! weftd — the weft node daemon. Flags: see `weftd --help` (flannel's names; each also
//! from `WEFTD_<NAME>` and `--config`).

use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::watch;
use tracing_subscriber::EnvFilter;
use weft_config::weftd::{clap_error_line, one_line_causes, LogFormat, SettingsError};
use weft_config::Settings;

fn main() -> ExitCode {
    let settings = match Settings::from_env_and_args() {
        Ok(settings) => settings,
        Err(SettingsError::Cli(e)) => match clap_error_line(&e) {
            Some(line) => {
                eprintln!("weftd: {line} (weftd --help lists every flag)");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
        Err(e) => {
            eprintln!("weftd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_tracing(&settings) {
        eprintln!("weftd: {e}");
        return ExitCode::from(2);
    }
    if let Some(notice) = settings.flannel_env_notice() {
        tracing::info!(
            "flanneld's environment variables: {notice} (WEFTD_ names win where both are set)"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weftd")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("weftd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json_logs = settings.log_format == LogFormat::Json;
    let result = runtime.block_on(async {
        let (shutdown_tx, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            let signal = wait_for_signal().await;
            tracing::info!(%signal, "shutting down");
            let _ = shutdown_tx.send(true);
        });
        weft_daemon::node::run(settings, shutdown).await
    });
    // Tasks still winding down (a slow etcd call) must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = one_line(&e);
            if json_logs {
                // Log collectors reading JSON get the error as a record too.
                tracing::error!("{message}");
            }
            eprintln!("weftd: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each said once.
fn one_line(error: &anyhow::Error) -> String {
    one_line_causes(error.chain())
}

fn init_tracing(settings: &Settings) -> Result<(), String> {
    let filter = EnvFilter::try_new(&settings.log_level)
        .map_err(|e| format!("--log-level {:?}: {e}", settings.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match settings.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| format!("cannot initialise logging: {e}"))
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on 127.0.0.1:9842: {source}")]
    struct Quoting {
        source: std::io::Error,
    }

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let error = anyhow::Error::new(Quoting { source: io }).context("health endpoint");
        let line = one_line(&error);
        assert_eq!(line.matches("in use").count(), 1, "{line}");
        assert!(line.starts_with("health endpoint: cannot listen"), "{line}");
        let nested = anyhow::anyhow!("line one\n  line two").context("outer");
        assert_eq!(one_line(&nested), "outer: line one; line two");
    }
}
