use clap::Parser;

fn main() {
    let cli = hoglet::cli::Cli::parse();
    let log_guard = hoglet::telemetry::init(
        &cli.log_filter(),
        cli.log_format == hoglet::config::LogFormat::Json,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(hoglet::cli::run(cli));
    drop(runtime);
    // Flush queued log lines before exiting.
    drop(log_guard);
    std::process::exit(code);
}
