//! The `viberglass` binary: parses the command line, loads configuration,
//! starts logging and hands over to the library for each role.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod client;
use viberglass_server::config::{Config, EncryptionKey, Override};
use viberglass_server::{StartupError, serve, telemetry};

#[derive(Parser)]
#[command(name = "viberglass", version, about = "Tickets in, pull requests out: the Viberglass agent orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: API, web UI and background loops.
    Serve(ServerArgs),
    /// Apply pending database migrations, then exit.
    Migrate(ServerArgs),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run one job as a viberator (started by a compute target, not by people).
    Worker(WorkerArgs),
    /// Secrets: list them (client), rotate the encryption key (maintenance).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Sign in to a server and keep an API token for the other client commands.
    Login(client::LoginArgs),
    /// The projects you can see.
    Projects(client::ListArgs),
    /// List, file and read tickets.
    #[command(subcommand)]
    Tickets(client::TicketsCommand),
    /// Start a run of one phase of a ticket: `viberglass run TICKET research --clanker CLANKER`.
    Run(client::RunArgs),
    /// List and read jobs, and their logs (`--follow` for live).
    #[command(subcommand)]
    Jobs(client::JobsCommand),
    /// Approve a ticket's research or planning document (`--continue-with CLANKER` also starts the next phase).
    Approve(client::ApproveArgs),
    /// The saved worker configurations.
    Clankers(client::ListArgs),
    /// Check a server's configuration, database, key, secrets, integrations, clankers, webhooks, Slack, overrides
    /// and stuck jobs (administrators): each problem with its layer, cause and fix; exit 1 when one is an error.
    Doctor(client::ListArgs),
    /// Download a diagnostics bundle (administrators): `--job ID`, `--ticket ID` or `--since T --until T`.
    Diagnose(client::DiagnoseArgs),
    /// Ask a server whether it is up (`/healthz`) or ready (`--ready`, `/readyz`): the container image's HEALTHCHECK.
    Health(client::HealthArgs),
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// The secrets' names, backends and references (never their values).
    List(client::ListArgs),
    /// Re-encrypt every stored secret under a new key. The configured key
    /// (and SECRETS_PREVIOUS_KEYS) still decrypt during the change.
    RotateKey(RotateArgs),
}

#[derive(Args)]
struct RotateArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The new key (64 hex characters, e.g. from `viberglass config gen-key`), read from the
    /// environment so it does not show in process lists.
    #[arg(long = "new-key", env = "VIBERGLASS_NEW_KEY", hide_env_values = true)]
    new_key: String,
}

#[derive(Args)]
struct WorkerArgs {
    /// Check that the worker runs here (as a compute target starts it), print `viberglass worker ok` and exit.
    #[arg(long)]
    self_check: bool,
    /// With --self-check: a program the clanker runs, which must be executable here (a path, or a name on the PATH).
    #[arg(long = "program", requires = "self_check")]
    programs: Vec<String>,
    /// Inside AWS Lambda: serve the invocations of the Lambda Runtime API (`AWS_LAMBDA_RUNTIME_API`),
    /// each one a job, in workspaces under VIBERGLASS_WORKSPACE (default /tmp).
    #[arg(long, conflicts_with_all = ["self_check", "job"])]
    lambda: bool,
    /// The job to run.
    #[arg(long, required_unless_present_any = ["self_check", "lambda"])]
    job: Option<String>,
    /// The server to report to.
    #[arg(long, env = "VIBERGLASS_SERVER_URL", required_unless_present_any = ["self_check", "lambda"])]
    server_url: Option<String>,
    /// A file holding the job's token, which the worker deletes as soon as it has read it (the local target's way).
    #[arg(long, env = "VIBERGLASS_JOB_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The job's token (from the environment, for targets that cannot hand over a file).
    #[arg(long, env = "VIBERGLASS_JOB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The workspace directory [default: the current directory].
    #[arg(long, env = "VIBERGLASS_WORKSPACE")]
    workspace: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print an annotated configuration file with every setting and its default.
    Default,
    /// Print a new random SECRETS_ENCRYPTION_KEY.
    GenKey,
}

#[derive(Args)]
struct ServerArgs {
    /// A TOML configuration file (see `viberglass config default`).
    #[arg(long, env = "VIBERGLASS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the embedded database and other state live [default: ./viberglass-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<String>,
    /// The address to listen on [default: 127.0.0.1].
    #[arg(long)]
    host: Option<String>,
    /// The port to listen on [default: 8888].
    #[arg(long)]
    port: Option<String>,
}

impl ServerArgs {
    fn load(&self) -> Result<Config, viberglass_server::ConfigError> {
        let mut overrides = Vec::new();
        for (key, flag, value) in
            [("data_dir", "--data-dir", &self.data_dir), ("host", "--host", &self.host), ("port", "--port", &self.port)]
        {
            if let Some(value) = value {
                overrides.push(Override { key, flag, value: value.clone() });
            }
        }
        Config::from_env(self.config.as_deref(), &overrides)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigCommand::Default) => {
            print!("{}", Config::default_file());
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCommand::GenKey) => {
            println!("{}", EncryptionKey::generate().to_hex());
            ExitCode::SUCCESS
        }
        Command::Serve(args) => run_server(&args, |config| Box::pin(viberglass_server::run(config))),
        Command::Migrate(args) => {
            run_server(&args, |config| Box::pin(async move { serve::open_database(&config).await.map(|_| ()) }))
        }
        Command::Worker(args) => run_worker(args),
        Command::Secrets(SecretsCommand::RotateKey(args)) => rotate_key(args),
        Command::Secrets(SecretsCommand::List(args)) => client::run(client::secrets(args)),
        Command::Login(args) => client::run(client::login(args)),
        Command::Projects(args) => client::run(client::projects(args)),
        Command::Tickets(command) => client::run(client::tickets(command)),
        Command::Run(args) => client::run(client::run_phase(args)),
        Command::Jobs(command) => client::run(client::jobs(command)),
        Command::Approve(args) => client::run(client::approve(args)),
        Command::Clankers(args) => client::run(client::clankers(args)),
        Command::Health(args) => client::run(client::health(args)),
        Command::Doctor(args) => client::run(client::doctor(args)),
        Command::Diagnose(args) => client::run(client::diagnose(args)),
    }
}

fn rotate_key(args: RotateArgs) -> ExitCode {
    let new_key = match EncryptionKey::parse(&args.new_key) {
        Ok(key) => key,
        Err(reason) => {
            eprintln!(
                "viberglass: error: invalid --new-key: {reason}; use 64 hex characters from `viberglass config gen-key`"
            );
            return ExitCode::from(2);
        }
    };
    run_server(&args.server, move |config| {
        Box::pin(async move {
            let store = serve::open_database(&config).await?;
            let current = serve::resolve_key(&config)?;
            let rotation = viberglass_server::vault::rotate_key(&store, &config, &current, &new_key)
                .await
                .map_err(|e| StartupError::Rotate(e.to_string()))?;
            println!(
                "re-encrypted {} secret(s) under key {} ({} already were)",
                rotation.resealed, rotation.new_key_id, rotation.already_current
            );
            for (name, why) in &rotation.unreadable {
                println!("could not re-encrypt {name}: {why}");
            }
            if let viberglass_server::config::KeySource::DataDirFile(path) = &config.encryption_key {
                serve::replace_key_file(path, &current, &new_key)?;
                println!("{} now holds the new key; the old one is in {}.previous", path.display(), path.display());
            } else {
                println!(
                    "next: set SECRETS_ENCRYPTION_KEY to the new key and SECRETS_PREVIOUS_KEYS to the old one on every server, \
                     restart them, then run rotate-key again to catch values written meanwhile"
                );
            }
            if rotation.unreadable.is_empty() {
                Ok(())
            } else {
                Err(StartupError::Rotate("some secrets could not be re-encrypted".into()))
            }
        })
    })
}

fn run_worker(args: WorkerArgs) -> ExitCode {
    if args.self_check {
        // Reached only if the binary, its libraries and the sandbox all work.
        for program in &args.programs {
            if let Err(why) = viberglass_worker::harness::ensure_program(program) {
                eprintln!("the clanker's program cannot run on this worker: {why}");
                return ExitCode::FAILURE;
            }
        }
        println!("viberglass worker ok");
        return ExitCode::SUCCESS;
    }
    let format = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => viberglass_server::config::LogFormat::Json,
        _ => viberglass_server::config::LogFormat::Text,
    };
    telemetry::init(format, &std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".into()), "worker");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if args.lambda {
        let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
            eprintln!(
                "viberglass: error: --lambda runs inside AWS Lambda, which sets AWS_LAMBDA_RUNTIME_API; it is not set"
            );
            return ExitCode::from(2);
        };
        let root = args.workspace.unwrap_or_else(|| PathBuf::from("/tmp"));
        return match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => ExitCode::from(runtime.block_on(viberglass_worker::lambda::serve(&api, root))),
            Err(err) => {
                eprintln!("viberglass: error: cannot start the async runtime: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let job = args.job.unwrap_or_default();
    let Ok(job_id) = job.parse() else {
        eprintln!("viberglass: error: `{job}` is not a job id");
        return ExitCode::from(2);
    };
    // Read and deleted first thing: the agent, started later in this
    // workspace, finds neither the file nor the token in our environment.
    let token = match (&args.token_file, args.token) {
        (Some(path), _) => {
            let read = std::fs::read_to_string(path);
            // Deleting it is what keeps it from the agent, which runs as the same user: no deletion, no job.
            if let Err(err) = std::fs::remove_file(path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!(
                    "viberglass: error: cannot delete the job's token file {} ({err}); the worker refuses to run an \
                     agent that could read it: make its directory writable by the worker's user",
                    path.display()
                );
                return ExitCode::from(2);
            }
            match read {
                Ok(token) => token.trim().to_owned(),
                Err(err) => {
                    eprintln!("viberglass: error: cannot read the job's token file {}: {err}", path.display());
                    return ExitCode::from(2);
                }
            }
        }
        (None, Some(token)) => token,
        (None, None) => {
            eprintln!(
                "viberglass: error: the job's token is missing: set VIBERGLASS_JOB_TOKEN_FILE or VIBERGLASS_JOB_TOKEN"
            );
            return ExitCode::from(2);
        }
    };
    let server_url = args.server_url.unwrap_or_default();
    let workspace = match args.workspace.map_or_else(std::env::current_dir, Ok) {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!("viberglass: error: cannot determine the workspace directory: {err}");
            return ExitCode::from(2);
        }
    };
    let config = viberglass_worker::WorkerConfig { job_id, server_url, token, workspace };
    let code = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => ExitCode::from(runtime.block_on(viberglass_worker::run(config))),
        Err(err) => {
            eprintln!("viberglass: error: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        }
    };
    // The worker's spans are batched: sent before it exits.
    telemetry::shutdown();
    code
}

type RoleFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StartupError>>>>;

/// Loads the configuration, starts logging and runs one server role,
/// turning any failure into one line on standard error and an exit code.
fn run_server(args: &ServerArgs, role: impl FnOnce(Config) -> RoleFuture) -> ExitCode {
    let config = match args.load() {
        Ok(config) => config,
        Err(err) => return fail(&StartupError::Config(err)),
    };
    telemetry::init(config.log_format, &config.log_level, "server");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("viberglass: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(role(config));
    drop(runtime);
    telemetry::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &StartupError) -> ExitCode {
    tracing::error!(error = %err, "startup failed");
    eprintln!("viberglass: error: {err}");
    ExitCode::from(err.exit_code())
}
