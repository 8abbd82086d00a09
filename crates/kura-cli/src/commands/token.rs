//! `kura token …`: the daemon's API tokens (stored hashed in the catalog, see
//! `kura_daemon::auth`).

use anyhow::{Context, Result};
use serde_json::json;

use crate::App;
use crate::cli_daemon::TokenCommand;
use crate::exit::{self, UsageError};
use crate::output::{local_ms, rfc3339_ms};

pub fn run(app: &App, cmd: TokenCommand) -> Result<i32> {
    let cat = app.catalog()?;
    match cmd {
        TokenCommand::Create(a) => {
            let expires = match &a.expires {
                None => None,
                Some(t) => {
                    let d = kura_types::Duration::parse_positive(t)
                        .map_err(|e| UsageError(format!("--expires: {e}")))?;
                    let ms = i64::try_from(d.std().as_millis()).unwrap_or(i64::MAX);
                    Some(chrono::Utc::now().timestamp_millis().saturating_add(ms))
                }
            };
            let secret = kura_daemon::auth::generate()?;
            let t = cat
                .add_token(&a.name, &kura_daemon::auth::hash(&secret), expires)
                .with_context(|| format!("create token {}", a.name))?;
            if app.global.json {
                println!(
                    "{}",
                    json!({"name": t.name, "token": secret, "expires": t.expires.map(rfc3339_ms)})
                );
            } else {
                // The secret alone on stdout (scripts capture it); the advice on stderr.
                println!("{secret}");
                if !app.global.quiet {
                    eprintln!(
                        "token {} created: keep the line above, it is not shown again \
                         (send it as Authorization: Bearer …)",
                        t.name
                    );
                }
            }
        }
        TokenCommand::List => {
            let ts = cat.tokens()?;
            if app.global.json {
                let v: Vec<_> = ts
                    .iter()
                    .map(|t| {
                        json!({
                            "name": t.name,
                            "created": rfc3339_ms(t.created),
                            "expires": t.expires.map(rfc3339_ms),
                            "last_used": t.last_used.map(rfc3339_ms),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let rows: Vec<Vec<String>> = ts
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            local_ms(t.created),
                            t.expires.map(local_ms).unwrap_or_else(|| "never".into()),
                            t.last_used.map(local_ms).unwrap_or_else(|| "never".into()),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    crate::output::table(&["Name", "Created", "Expires", "Last used"], &rows)
                );
            }
        }
        TokenCommand::Revoke(a) => {
            cat.revoke_token(&a.name)
                .with_context(|| format!("revoke token {}", a.name))?;
            app.say(format!("token {} revoked", a.name));
        }
    }
    Ok(exit::OK)
}
