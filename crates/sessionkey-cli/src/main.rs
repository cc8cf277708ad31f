//! `sessionkey`: fresh, short-lived session keys for every connection.

mod cmd;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// The exit statuses (sysexits(3)), shown at the end of every command's `--help`.
const EXIT_STATUS: &str = "\
Exit status:
  0   success (for pipes: only after the peer's authenticated close)
  64  usage: an unknown option, suite or value (the message lists the valid ones)
  66  missing input: a key, config or other input file that does not exist
  69  peer, relay or device unavailable
  70  internal error
  73  cannot create an output file or directory
  75  temporary failure (the relay asks to retry later)
  76  tampering or truncation (a protocol error)
  77  key or certificate refused or changed, or no permission (TUN)
  78  bad configuration, key file or state";

/// `cmd` and all its subcommands, with the exit-status table after their help.
fn with_exit_status(cmd: clap::Command) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    let mut cmd = cmd.after_help(EXIT_STATUS);
    for name in names {
        cmd = cmd.mut_subcommand(name, with_exit_status);
    }
    cmd
}

/// The command line, or the process exit: help and version exit 0, usage errors 64.
fn parse_cli() -> Result<Cli, ExitCode> {
    let matches = with_exit_status(Cli::command()).try_get_matches();
    match matches.and_then(|m| Cli::from_arg_matches(&m)) {
        Ok(cli) => Ok(cli),
        Err(e) => {
            let _ = e.print();
            Err(if e.use_stderr() {
                ExitCode::from(cmd::USAGE)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Fresh, short-lived session keys for every connection: an authenticated ephemeral key
/// exchange (hybrid X25519 + ML-KEM-768 by default), a fast AEAD, automatic rotation.
///
/// Every subcommand's `--help` ends with the exit-status table ([`EXIT_STATUS`]).
#[derive(Debug, Parser)]
#[command(name = "sessionkey", version, about, long_about)]
struct Cli {
    /// More logging (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Log format on standard error.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    /// Where sessionkey keeps what it makes and learns (the self-signed TLS certificate,
    /// messaging state). Default: $XDG_DATA_HOME/sessionkey, else ~/.local/share/sessionkey.
    #[arg(long, value_name = "DIR", global = true, env = "SESSIONKEY_STATE")]
    state: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// See a session key's whole life: a real tunnel on loopback, rotation, close.
    Demo(cmd::demo::Args),
    /// Generate a static identity: a private key file (mode 0600) and PATH.pub.
    Keygen(cmd::keygen::KeygenArgs),
    /// Print the public key line of a private or public key file.
    Pubkey(cmd::keygen::PubkeyArgs),
    /// Encrypted TCP tunnels: one session per connection.
    Tunnel(cmd::tunnel::Args),
    /// One session between standard input/output and a peer, like ncat.
    Pipe(cmd::pipe::Args),
    /// The live sessions of running tunnel processes.
    Status(cmd::status::Args),
    /// A VPN over UDP on a Linux TUN interface: `vpn up CONFIG`, `vpn down NAME`, `vpn show`.
    #[command(subcommand)]
    Vpn(cmd::vpn::Command),
    /// End-to-end encrypted messages through a relay: `msg init | send | recv | contacts | verify`.
    #[command(subcommand)]
    Msg(cmd::msg::Command),
    /// The messaging relay: `relay serve --listen ADDR [--database URL]`.
    #[command(subcommand)]
    Relay(cmd::relay::Command),
    /// The authorized peers of a fleet of tunnel gateways in PostgreSQL:
    /// `peers add | remove | list --database URL [--group NAME]`.
    #[command(subcommand)]
    Peers(cmd::peers::Command),
    /// Check a tunnel or VPN configuration file without starting anything: every problem
    /// as FILE:LINE: field: what and the fix; exit 0 when clean, 78 otherwise.
    Check(cmd::check::Args),
    /// Write the manual pages (sessionkey.1 and one per subcommand) into a directory.
    Man(cmd::man::ManArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(cmd::man::CompletionsArgs),
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    // The demo prints its own account of events; logs would repeat it. Messaging commands
    // print their results; per-connection TLS logs would only be noise.
    let quiet_default = if matches!(
        cli.command,
        Command::Demo(_)
            | Command::Msg(_)
            | Command::Man(_)
            | Command::Completions(_)
            | Command::Check(_)
    ) {
        "warn"
    } else {
        "info"
    };
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => quiet_default,
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter =
        EnvFilter::try_from_env("SESSIONKEY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Buffers of 128 KiB and more (a session's, while data flows) get their own mappings and go
/// back to the system when freed. glibc otherwise raises its mmap threshold after the first
/// such free and keeps every later buffer in the heap, so the memory of thousands of idle
/// tunnel sessions stays at its peak.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_large_buffers_to_the_system() {
    // SAFETY: mallopt only sets an allocator parameter (a valid one, with a valid value);
    // it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_buffers_to_the_system() {}

fn main() -> ExitCode {
    return_large_buffers_to_the_system();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    init_logging(&cli);
    cmd::common::set_state_dir(cli.state.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sessionkey: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => cmd::demo::run(&args).await,
            Command::Keygen(args) => cmd::keygen::keygen(&args),
            Command::Pubkey(args) => cmd::keygen::pubkey(&args),
            Command::Tunnel(args) => cmd::tunnel::run(args).await,
            Command::Pipe(args) => cmd::pipe::run(args).await,
            Command::Status(args) => cmd::status::run(&args).await,
            Command::Vpn(command) => cmd::vpn::run(command).await,
            Command::Msg(command) => cmd::msg::run(command).await,
            Command::Relay(command) => cmd::relay::run(command).await,
            Command::Peers(command) => cmd::peers::run(command).await,
            Command::Check(args) => cmd::check::run(&args),
            Command::Man(args) => cmd::man::man(&args),
            Command::Completions(args) => cmd::man::completions(&args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessionkey: {e:#}");
            ExitCode::from(cmd::exit_code(&e))
        }
    }
}
