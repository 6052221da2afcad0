//! `coffer events [--since N]`: the cluster's changes as the manager applies them, one
//! line each (`--format json`: the API's objects, one per log entry), until the stream
//! ends. After a cut,
//! run it again with `--since` the last index printed: nothing is missed or repeated; an
//! index no longer kept is refused (`gone`, exit 1): relist, then resume.

use std::io::Write;

use coffer_api::events::{ChangeEvent, EventKind};

use crate::cli::exit::CliError;
use crate::cli::output::{lower, node_hex, Format};
use crate::cli::ClientOpts;

pub(crate) async fn events(since: Option<u64>, opts: &ClientOpts) -> Result<(), CliError> {
    let c = opts.client()?;
    let mut stream = c.events(since).await?;
    while let Some(e) = stream.next().await? {
        print(&e, opts.format);
        // Lines go out as they come: a reader waits on each.
        let _ = std::io::stdout().flush();
        if e.gone {
            return Err(CliError::Local(format!(
                "the manager can no longer give every change after index {}: relist, then resume with --since",
                e.index
            )));
        }
    }
    Err(CliError::Local("the manager ended the stream; resume with --since the last index".into()))
}

fn print(e: &ChangeEvent, format: Format) {
    match format {
        Format::Json => println!("{}", serde_json::to_string(e).unwrap_or_default()),
        Format::Table => {
            for c in &e.changes {
                let id = match (c.kind, c.id.parse::<u64>()) {
                    (EventKind::Node, Ok(n)) => node_hex(n),
                    _ => c.id.clone(),
                };
                let name = c.name.as_deref().unwrap_or("");
                println!("{:<8} {}  {:<8} {:<7} {id} {name}", e.index, e.at, lower(&c.kind), lower(&c.action));
            }
        }
    }
}
