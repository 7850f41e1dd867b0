//! The command line: `herald [serve]` and `herald token`.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "A Server-Sent Events notification server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Print a token signed with the configured key.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// Give the token the `admin` role (publish, stats).
        #[arg(long)]
        admin: bool,
        /// Channel patterns the token may subscribe to, comma-separated (`news,team-42.*`).
        #[arg(long, value_delimiter = ',')]
        channels: Vec<String>,
        /// Seconds until the token expires.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}
