//! `coffer token ...`: API tokens for tooling (needs the admin bundle). A token is shown
//! once, at creation.

use clap::{Subcommand, ValueEnum};
use coffer_api::tokens::TokenScope;
use zeroize::Zeroizing;

use crate::cli::exit::CliError;
use crate::cli::output::{age, lower, print_json, Format};
use crate::cli::ClientOpts;

#[derive(ValueEnum, Debug, Clone, Copy)]
pub(crate) enum ScopeArg {
    ReadOnly,
    ReadWrite,
}

#[derive(Subcommand, Debug)]
pub(crate) enum TokenCmd {
    /// Create an API token (shown once).
    Create {
        name: String,
        #[arg(long, value_enum)]
        scope: ScopeArg,
    },
    Ls,
    /// Revoke a token: refused by every manager once this returns.
    Rm {
        id: String,
    },
}

pub(crate) async fn token(cmd: TokenCmd, opts: &ClientOpts) -> Result<(), CliError> {
    let c = opts.client()?;
    match cmd {
        TokenCmd::Create { name, scope } => {
            let scope = match scope {
                ScopeArg::ReadOnly => TokenScope::ReadOnly,
                ScopeArg::ReadWrite => TokenScope::ReadWrite,
            };
            let t = c.create_api_token(&name, scope).await?;
            let token = Zeroizing::new(t.token);
            println!("API token {} ({}), shown once:", t.id, lower(&t.scope));
            println!("  {}", token.as_str());
        }
        TokenCmd::Ls => {
            let list = c.api_tokens().await?;
            if opts.format == Format::Json {
                return print_json(&list.tokens);
            }
            println!("{:<18} {:<24} {:<11} {:<12} REVOKED", "ID", "NAME", "SCOPE", "CREATED");
            for t in list.tokens {
                println!(
                    "{:<18} {:<24} {:<11} {:<12} {}",
                    t.id,
                    t.name,
                    lower(&t.scope),
                    age(t.created_at_ms),
                    t.revoked
                );
            }
        }
        TokenCmd::Rm { id } => {
            c.revoke_api_token(&id).await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}
