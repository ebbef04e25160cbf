//! `airlock keys`: create, list and revoke the API keys of `airlock serve`. Keys are
//! stored hashed (SHA-256) in the data directory; a key is shown once, at creation.

use std::path::PathBuf;

use airlock_service::keys::create_key;
use airlock_service::store::KeyStore;
use airlock_service::store::sqlite::SqliteStore;
use anyhow::{Context, bail};

/// Arguments of `airlock keys`.
#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    /// The data directory of the server (default: $AIRLOCK_DATA_DIR, else ~/.local/share/airlock).
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Create a key and print it (once: only its hash is kept).
    Create {
        /// A name to recognise the key by (unique among live keys).
        name: String,
        /// Live sandboxes this key may hold (default: the server's per_key_max_sandboxes).
        #[arg(long)]
        max_sandboxes: Option<u32>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by id or name; it stops working at once.
    Revoke {
        /// The key's id (`key_...`) or name.
        key: String,
    },
}

/// Runs `airlock keys`.
pub fn main(a: KeysArgs) -> anyhow::Result<i32> {
    let dir = a.data_dir.clone().unwrap_or_else(airlock_service::default_data_dir);
    let store = SqliteStore::open(&dir).with_context(|| format!("opening the key store in {}", dir.display()))?;
    match a.action {
        Action::Create { name, max_sandboxes } => {
            let (key, info) = create_key(&store, &name, max_sandboxes)?;
            if a.json {
                println!("{}", serde_json::json!({ "key": key, "id": info.id, "name": info.name }));
            } else {
                println!("{key}");
                eprintln!(
                    "airlock: created key {} ('{}'); it is shown only now: store it safely. Use it as `Authorization: Bearer <key>`.",
                    info.id, info.name
                );
            }
        }
        Action::List => {
            let keys = store.keys()?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else if keys.is_empty() {
                eprintln!("airlock: no keys in {}; create one with `airlock keys create NAME`", dir.display());
            } else {
                println!("{:<38} {:<20} {:<12} {:<10} {:<26} revoked", "id", "name", "prefix", "sandboxes", "created");
                for k in keys {
                    println!(
                        "{:<38} {:<20} {:<12} {:<10} {:<26} {}",
                        k.id,
                        k.name,
                        k.prefix,
                        k.max_sandboxes.map(|m| m.to_string()).unwrap_or_else(|| "default".into()),
                        k.created_at,
                        k.revoked_at.unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        Action::Revoke { key } => {
            if !store.revoke_key(&key)? {
                bail!("no live key with id or name '{key}' (see `airlock keys list`)");
            }
            eprintln!("airlock: revoked {key}");
        }
    }
    Ok(0)
}
