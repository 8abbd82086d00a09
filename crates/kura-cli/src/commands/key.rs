use anyhow::Result;
use kura_repo::crypto::KdfParams;

use crate::cli::KeyCommand;
use crate::output::table;
use crate::{App, exit, password};

pub fn run(app: &App, k: KeyCommand) -> Result<i32> {
    let repo = app.open()?;
    match k {
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if app.global.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                let rows: Vec<Vec<String>> = keys
                    .iter()
                    .map(|k| {
                        vec![
                            format!("{}{}", if k.current { "*" } else { " " }, &k.id[..8]),
                            k.username.clone(),
                            k.hostname.clone(),
                            match &k.damaged {
                                Some(_) => "DAMAGED".to_string(),
                                None => k.created.clone(),
                            },
                        ]
                    })
                    .collect();
                print!("{}", table(&[" ID", "User", "Host", "Created"], &rows));
            }
        }
        KeyCommand::Add(a) => {
            let pw = password::new(a.new_password_file.as_deref(), "KURA_NEW_PASSWORD")?;
            let mut kdf = KdfParams::default();
            if let Some(m) = a.kdf_memory_kib {
                kdf.memory_kib = m;
                kdf.iterations = 1;
            }
            let id = repo.add_key(&pw, kdf)?;
            if app.global.json {
                println!("{}", serde_json::json!({ "id": id }));
            } else {
                app.say(format!("added key {}", &id[..8]));
            }
        }
        KeyCommand::Remove(a) => {
            let id = repo.remove_key(&a.id)?;
            if app.global.json {
                println!("{}", serde_json::json!({ "removed": id }));
            } else {
                app.say(format!("removed key {}", &id[..8]));
            }
        }
    }
    Ok(exit::OK)
}
