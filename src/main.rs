//! The `mcpfleet` binary: parses the command line, sets up logging and signals, and
//! hands off to the library. Every error ends as one line on stderr and exit code 1.

use mcpfleet::cli::{self, Cli, TopCommand};

/// Logs to stderr, as `format` says, the lines `filter` (or RUST_LOG, or the default)
/// lets through.
fn init_logging(format: cli::serve::LogFormat, filter: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(filter) => EnvFilter::try_new(filter)
            .map_err(|e| anyhow::anyhow!("invalid --log filter {filter:?}: {e}"))?,
        None => EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(cli::serve::DEFAULT_LOG_FILTER)),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cli::serve::LogFormat::Text => logs.init(),
        cli::serve::LogFormat::Json => logs.json().init(),
    }
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = cli.client;
    match cli.command {
        TopCommand::Serve(args) => {
            init_logging(args.log_format, args.log_filter.as_deref())?;
            cli::serve::run_serve(*args, termination_signal()).await?;
        }
        TopCommand::Server { command } => {
            cli::run_client(client, cli::ClientCommand::Server(command)).await?
        }
        TopCommand::Cluster { command } => {
            cli::run_client(client, cli::ClientCommand::Cluster(command)).await?
        }
        TopCommand::Status {
            stale,
            watch,
            interval_ms,
        } => {
            let every = watch.then(|| std::time::Duration::from_millis(interval_ms));
            cli::run_client(client, cli::ClientCommand::Status { stale, every }).await?
        }
        TopCommand::Node { command } => {
            cli::run_client(client, cli::ClientCommand::Node(command)).await?
        }
        TopCommand::Tools { server } => {
            cli::run_client(client, cli::ClientCommand::Tools { server }).await?
        }
        TopCommand::Call {
            server,
            tool,
            arguments,
            timeout_ms,
        } => {
            cli::run_client(
                client,
                cli::ClientCommand::Call {
                    server,
                    tool,
                    arguments,
                    timeout_ms,
                },
            )
            .await?
        }
        TopCommand::Supervise(args) => std::process::exit(args.run().await),
        TopCommand::Config {
            command: cli::ConfigCommand::Check { file },
        } => match cli::config_file::check(&file) {
            Ok(()) => println!("{}: ok", file.display()),
            Err(errors) => {
                for error in &errors {
                    eprintln!("error: {error}");
                }
                std::process::exit(1);
            }
        },
        TopCommand::Import(args) => cli::import::run_import(args, &client).await?,
        TopCommand::Export(args) => cli::import::run_export(args, &client).await?,
        TopCommand::Snapshot { command } => cli::snapshot::run_snapshot(command, &client).await?,
        TopCommand::Cert { command } => {
            cli::cert::run_cert(command, client.output == cli::OutputFormat::Json)?
        }
        TopCommand::Token { command } => cli::token::run_token(command, &client).await?,
        TopCommand::Audit { since } => cli::token::run_audit(since, &client).await?,
        TopCommand::SecretsKey { file } => cli::token::write_secrets_key(&file)?,
        TopCommand::Bench { command } => match command {
            cli::BenchCommand::Put(args) => cli::bench::run_put(args, &client).await?,
            cli::BenchCommand::Call(args) => cli::bench::run_call(args, &client).await?,
            cli::BenchCommand::Plan(args) => cli::bench_plan::run_plan(args),
        },
    }
    Ok(())
}

/// Parses the command line. Help and version print as usual; a usage error prints
/// only its first line (the reason), like every other error, and exits with 2.
fn parse_command_line() -> Cli {
    match cli::parse_args(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(cli::ParseFailure::Config(errors)) => {
            for error in errors {
                eprintln!("error: {error}");
            }
            std::process::exit(2);
        }
        Err(cli::ParseFailure::Clap(error)) if !error.use_stderr() => error.exit(),
        Err(cli::ParseFailure::Clap(error)) => {
            let text = error.render().to_string();
            let reason = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: invalid usage");
            eprintln!("{reason}");
            std::process::exit(2);
        }
    }
}

/// Threads of the blocking pool: storage calls (a few at a time, as openraft waits for
/// each append), and tokio's own blocking work such as name lookups and file reads.
const MAX_BLOCKING_THREADS: usize = 16;

fn main() {
    let cli = parse_command_line();
    // A client command whose output is cut short (`| head`) ends quietly, with the
    // status a SIGPIPE death gives, as other command-line tools do, instead of
    // panicking on the broken pipe. SIGPIPE itself stays ignored, in clients as in
    // nodes: a peer that closes its socket (a TLS node refusing a plaintext client,
    // say) must surface as an error, not kill the process.
    if !matches!(cli.command, TopCommand::Serve(_) | TopCommand::Supervise(_)) {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
                std::process::exit(128 + libc::SIGPIPE);
            }
            default_hook(info);
        }));
    }
    // One scheduler thread: on small hosts a single thread avoids cross-thread
    // wake-ups. fsyncs, log purges and snapshots' encoding run on the blocking pool
    // (src/env/disk.rs, src/raft/state_machine.rs).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(run(cli)) {
        eprintln!("error: {}", error.to_string().replace('\n', " "));
        std::process::exit(1);
    }
}
