//! `ratethrottle manage`: changes and shows the lists of a running gateway
//! through its admin API.

use clap::{ArgGroup, Args};
use http::Method;
use serde_json::Value;

use super::admin_client::{AdminClient, block_on, human_duration, seconds_until};
use super::{Cli, Io};
use crate::admin::percent_encode;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("action").required(true).args(
    ["blacklist_add", "blacklist_remove", "whitelist_add", "whitelist_remove", "list_all"]
)))]
#[command(group(ArgGroup::new("adding").args(["blacklist_add", "whitelist_add"])))]
pub struct ManageArgs {
    /// Add an address or CIDR block to the blacklist (always 403)
    #[arg(long, value_name = "IP_OR_CIDR")]
    blacklist_add: Option<String>,
    /// Remove an entry from the blacklist
    #[arg(long, value_name = "IP_OR_CIDR")]
    blacklist_remove: Option<String>,
    /// Add an address or CIDR block to the whitelist (bypasses every limit)
    #[arg(long, value_name = "IP_OR_CIDR")]
    whitelist_add: Option<String>,
    /// Remove an entry from the whitelist
    #[arg(long, value_name = "IP_OR_CIDR")]
    whitelist_remove: Option<String>,
    /// Show both lists and the active blocks
    #[arg(long)]
    list_all: bool,
    /// How long an added entry lasts (3600, "90s", "15m", "1h"); permanent without it
    #[arg(long, value_name = "DUR", requires = "adding")]
    duration: Option<String>,
    /// The gateway's admin API [default: the config's admin.listen]
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// The admin token; prefer the environment variable, which `ps` does not show
    #[arg(
        long,
        value_name = "TOKEN",
        env = "RATETHROTTLE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

pub fn run(cli: &Cli, args: &ManageArgs, io: &mut Io<'_>) -> anyhow::Result<u8> {
    let Some(client) =
        AdminClient::from_command_line(cli, args.admin.as_deref(), args.token.clone(), io)?
    else {
        return Ok(1);
    };
    let text = block_on(manage(&client, args))?;
    write!(io.out, "{text}")?;
    Ok(0)
}

async fn manage(client: &AdminClient, args: &ManageArgs) -> anyhow::Result<String> {
    let additions = [
        ("blacklist", &args.blacklist_add),
        ("whitelist", &args.whitelist_add),
    ];
    for (list, entry) in additions {
        if let Some(entry) = entry {
            let body = serde_json::json!({ "entry": entry, "duration": args.duration });
            let answer = client
                .call(
                    Method::POST,
                    &format!("/lists/{list}"),
                    Some(body.to_string()),
                )
                .await?
                .json()?;
            let shown = answer["entry"].as_str().unwrap_or(entry);
            return Ok(format!(
                "added {shown} to the {list} {}\n",
                lifetime(args.duration.as_deref(), &answer["expires_at"])
            ));
        }
    }
    let removals = [
        ("blacklist", &args.blacklist_remove),
        ("whitelist", &args.whitelist_remove),
    ];
    for (list, entry) in removals {
        if let Some(entry) = entry {
            let path = format!("/lists/{list}/{}", percent_encode(entry));
            client.call(Method::DELETE, &path, None).await?;
            return Ok(format!("removed {entry} from the {list}\n"));
        }
    }
    let lists = client.get("/lists").await?.json()?;
    Ok(render_lists(&lists))
}

/// "for 1h (until Unix time 1795...)" or "permanently".
fn lifetime(duration: Option<&str>, expires_at: &Value) -> String {
    match (duration, expires_at.as_u64()) {
        (Some(duration), Some(at)) => format!("for {duration} (until Unix time {at})"),
        (None, Some(at)) => format!("until Unix time {at}"),
        (_, None) => "permanently".to_string(),
    }
}

/// `GET /lists` as two tables and the active blocks.
pub fn render_lists(lists: &Value) -> String {
    let mut out = String::new();
    for list in ["whitelist", "blacklist"] {
        let entries = lists[list]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        out.push_str(&format!("{list} ({})\n", entries.len()));
        for entry in entries {
            let ends = match entry["expires_at"].as_u64() {
                Some(at) => format!("ends in {}", human_duration(seconds_until(at))),
                None => "permanent".to_string(),
            };
            out.push_str(&format!(
                "  {:<40} {:<22} {}\n",
                entry["entry"].as_str().unwrap_or("?"),
                ends,
                entry["source"].as_str().unwrap_or("")
            ));
        }
    }
    let blocks = lists["blocks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    out.push_str(&format!("active blocks ({})\n", blocks.len()));
    for block in blocks {
        let why = match block["rule"].as_str() {
            Some(rule) => format!("{} (rule {rule})", block["reason"].as_str().unwrap_or("?")),
            None => block["reason"].as_str().unwrap_or("?").to_string(),
        };
        out.push_str(&format!(
            "  {:<40} {:<22} ends in {}\n",
            block["identity"].as_str().unwrap_or("?"),
            why,
            human_duration(block["retry_after"].as_u64().unwrap_or(0))
        ));
    }
    out
}
