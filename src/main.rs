use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tailsift::config::Config;
use tailsift::rules::RuleSet;

/// Tail-based sampling for OpenTelemetry traces on Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format (default: the config's `log.format`, else text).
    #[arg(long, global = true, value_enum, env = "TAILSIFT_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sampler against a Kafka cluster.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "tailsift.yaml")]
        config: PathBuf,
    },
    /// Re-key OTLP traffic by trace id: read `kafka.input_topics`, split each message per
    /// trace, write the traces keyed by trace id to `kafka.output_topic` (the sampling topic).
    Route {
        /// The configuration file (its `kafka`, `http` and `shutdown_timeout` sections).
        #[arg(long, short, default_value = "tailsift.yaml")]
        config: PathBuf,
    },
    /// Run everything on this machine: in-process Kafka, generated traces, the sampler.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Traces generated per second.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// Rules directory. Default: `rules` if it exists here, else the example rules
        /// compiled into the binary. A directory given here must exist.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Where /metrics, /healthz and /readyz are served.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Work with rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file as `run` would load it (environment overrides included)
    /// and the rules directory it names,
    /// without connecting to Kafka; exits non-zero with the error.
    Check {
        file: PathBuf,
        /// Check the rules of this directory instead of the config's `rules.dir` (for a
        /// config rendered for another machine, such as the Helm chart's).
        #[arg(long, conflicts_with = "no_rules")]
        rules: Option<PathBuf>,
        /// Check the configuration only (its rules are checked elsewhere).
        #[arg(long)]
        no_rules: bool,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate a rules directory; exits non-zero and lists every error. Also warns about
    /// rules that load but cannot do what they say (shadowed rules, `!=` at trace scope...).
    Check {
        dir: PathBuf,
        /// Exit non-zero on warnings too (for CI).
        #[arg(long)]
        strict: bool,
    },
    /// Run case files (traces with the outcome each should get) against a rules directory;
    /// exits non-zero when a case fails.
    Test {
        dir: PathBuf,
        /// Case files (YAML).
        #[arg(required = true)]
        cases: Vec<PathBuf>,
        /// The `rules.salt` of the deployment, if it sets one.
        #[arg(long)]
        salt: Option<String>,
    },
    /// Show, rule by rule, which conditions hold for the traces of a case file.
    Explain {
        dir: PathBuf,
        /// A case file (YAML).
        trace: PathBuf,
        /// Only the case with this name.
        #[arg(long)]
        case: Option<String>,
        /// The `rules.salt` of the deployment, if it sets one.
        #[arg(long)]
        salt: Option<String>,
    },
}

fn load_rules(dir: &std::path::Path, salt: Option<&str>) -> Result<RuleSet, ExitCode> {
    RuleSet::load(dir, salt).map_err(|e| {
        eprintln!("{e}");
        eprintln!("{} error(s)", e.0.len());
        ExitCode::FAILURE
    })
}

/// Writes `text` to stdout. A reader that went away (`tailsift ... | head -1`) ends the
/// output quietly: that is how a pipe says "enough", not an error worth a panic.
fn print_out(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot write the output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Notes the files of a rules directory that are not read (not `*.yaml` / `*.yml`).
fn note_skipped(dir: &std::path::Path) {
    for f in tailsift::rules::skipped_files(dir) {
        eprintln!(
            "note: {} is not read: rule files are named *.yaml or *.yml",
            f.display()
        );
    }
}

fn rules_command(command: RulesCommand) -> ExitCode {
    match command {
        RulesCommand::Check { dir, strict } => {
            note_skipped(&dir);
            match load_rules(&dir, None) {
                Ok(rules) => {
                    let warnings = rules.warnings();
                    for w in &warnings {
                        eprintln!("warning: {w}");
                    }
                    let noted = match warnings.len() {
                        0 => String::new(),
                        n => format!(", {n} warning(s)"),
                    };
                    let mut text = format!(
                        "{}: {} rules OK{noted} (version {})\n",
                        dir.display(),
                        rules.rules().len(),
                        rules.version()
                    );
                    if let Some(r) = rules.redaction() {
                        let (entries, allowlists) = r.counts();
                        text += &format!(
                            "{}: {entries} entries, {allowlists} allowlists OK\n",
                            r.file()
                        );
                    }
                    for line in
                        tailsift::rules::schedule(rules.rules(), std::time::SystemTime::now())
                            .into_iter()
                            .chain(tailsift::rules::early_notes(rules.rules()))
                    {
                        text += &line;
                        text.push('\n');
                    }
                    let printed = print_out(&text);
                    if strict && !warnings.is_empty() {
                        ExitCode::FAILURE
                    } else {
                        printed
                    }
                }
                Err(code) => code,
            }
        }
        RulesCommand::Test { dir, cases, salt } => {
            let rules = match load_rules(&dir, salt.as_deref()) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let report = tailsift::rules::cases::run(&rules, &cases);
            let printed = print_out(&report.text);
            if report.failed == 0 && report.passed > 0 {
                printed
            } else {
                ExitCode::FAILURE
            }
        }
        RulesCommand::Explain {
            dir,
            trace,
            case,
            salt,
        } => {
            let rules = match load_rules(&dir, salt.as_deref()) {
                Ok(r) => r,
                Err(code) => return code,
            };
            match tailsift::rules::cases::explain_file(&rules, &trace, case.as_deref()) {
                Ok(text) => print_out(&text),
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `tailsift config check`: the file as `run` loads it, and the rules directory it names.
fn config_check(file: &std::path::Path, rules: Option<PathBuf>, no_rules: bool) -> ExitCode {
    let (config, settings) = match Config::load(file).and_then(|c| Ok((c.validate()?, c))) {
        Ok((settings, c)) => (c, settings),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if no_rules {
        return print_out(&format!("{}: OK (rules not checked)\n", file.display()));
    }
    let dir = rules.as_ref().unwrap_or(&config.rules.dir);
    note_skipped(dir);
    match RuleSet::load_with(dir, &settings.rule_options) {
        Ok(rules) => print_out(&format!(
            "{}: OK ({} rules from {}, version {})\n",
            file.display(),
            rules.rules().len(),
            dir.display(),
            rules.version()
        )),
        Err(e) => {
            eprintln!(
                "{}: `rules.dir` ({}): the rules do not load:\n{e}",
                file.display(),
                dir.display()
            );
            eprintln!("{} error(s)", e.0.len());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` reads its config first: the log format may be set there.
    let mut loaded = None;
    if let Command::Run { config } = &cli.command {
        match Config::load(config) {
            Ok(c) => loaded = Some(c),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let format = cli
        .log_format
        .unwrap_or(match loaded.as_ref().map(|c| c.log.format) {
            Some(tailsift::config::LogFormat::Json) => LogFormat::Json,
            _ => LogFormat::Text,
        });
    tailsift::logs::init(matches!(format, LogFormat::Json));
    match cli.command {
        Command::Rules { command } => rules_command(command),
        Command::Config {
            command:
                ConfigCommand::Check {
                    file,
                    rules,
                    no_rules,
                },
        } => config_check(&file, rules, no_rules),
        command => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(run(command, loaded));
            // Do not wait on a blocking task stuck on an unresponsive broker.
            rt.shutdown_timeout(Duration::from_secs(1));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Waits for SIGTERM or SIGINT, then runs `shutdown`. The shutdown sequence bounds its own
/// waits; this is the backstop for a broker that does not answer the final commit. Exiting
/// then is safe: nothing held was committed, so the next owner replays it.
async fn until_signal_then(
    config: &Config,
    shutdown: impl std::future::Future<Output = Result<(), std::convert::Infallible>>,
) -> anyhow::Result<()> {
    tailsift::pipeline::signal().await;
    tracing::info!("signal received: shutting down");
    let bound = config.shutdown_timeout + Duration::from_secs(5);
    match tokio::time::timeout(bound, shutdown).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(never)) => match never {},
        Err(_) => anyhow::bail!(
            "shutdown did not finish within {bound:?}; exiting (uncommitted offsets are replayed)"
        ),
    }
}

async fn run(command: Command, loaded: Option<Config>) -> anyhow::Result<()> {
    match command {
        Command::Run { config } => {
            let config = match loaded {
                Some(c) => c,
                None => Config::load(&config)?,
            };
            let running = tailsift::pipeline::start(&config).await?;
            until_signal_then(&config, running.shutdown()).await
        }
        Command::Route { config } => {
            let config = Config::load(&config)?;
            let router = tailsift::kafka::route::start(&config).await?;
            until_signal_then(&config, router.shutdown()).await
        }
        Command::Demo {
            duration,
            rate,
            rules,
            listen,
        } => tailsift::demo::run(tailsift::demo::DemoOptions {
            duration: duration.map(Duration::from_secs),
            rate,
            rules,
            listen,
        })
        .await
        .context("demo failed"),
        Command::Rules { .. } | Command::Config { .. } => Ok(()),
    }
}
