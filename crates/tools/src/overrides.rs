//! `tollgate override set|get|list|delete`: the admin API's overrides
//! (`/v1/overrides`) from the command line, against a running server. The
//! admin token is read from `TOLLGATE_ADMIN_TOKEN`; `docs/OVERRIDES.md` is
//! the guide.

use std::time::Duration;

use tollgate::overrides::path_segment;

/// The longest a request to the server may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The most pages `list` follows (at most 1000 overrides each).
const MAX_PAGES: usize = 1000;

/// Command line of `tollgate override`.
#[derive(Debug, Clone, clap::Args)]
#[command(about = "Set, read, list and delete per-key overrides on a running server")]
pub struct OverrideArgs {
    /// The server's HTTP address.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// What `tollgate override` does.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Action {
    /// Sets the override of a policy for one key (replacing any).
    Set {
        /// The policy.
        policy: String,
        /// The key, as `/v1/check` takes it.
        key: String,
        /// Units per period for this key.
        #[arg(long, conflicts_with_all = ["unlimited", "blocked"])]
        limit: Option<u64>,
        /// The period (e.g. `1m`); the policy's when absent.
        #[arg(long, requires = "limit")]
        period: Option<String>,
        /// The burst (token_bucket, gcra, leaky_bucket).
        #[arg(long, requires = "limit")]
        burst: Option<u64>,
        /// Every check of this key allowed, nothing charged.
        #[arg(long, conflicts_with = "blocked")]
        unlimited: bool,
        /// Every check of this key denied.
        #[arg(long)]
        blocked: bool,
        /// Ends the override after this long (e.g. `7d`).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Prints the override in force for a key (set through the API or the
    /// configuration file).
    Get {
        /// The policy.
        policy: String,
        /// The key.
        key: String,
    },
    /// Prints every override in force, one JSON object per line.
    List {
        /// Only this policy's.
        #[arg(long)]
        policy: Option<String>,
    },
    /// Deletes the override set through the API for a key.
    Delete {
        /// The policy.
        policy: String,
        /// The key.
        key: String,
    },
}

/// Runs `tollgate override`: returns what to print, or the error to print
/// (the server's `detail` when it refused).
///
/// # Errors
/// No `TOLLGATE_ADMIN_TOKEN`, the server unreachable, or its refusal.
pub async fn run(args: OverrideArgs) -> Result<String, String> {
    let token = std::env::var("TOLLGATE_ADMIN_TOKEN")
        .map_err(|_| "set TOLLGATE_ADMIN_TOKEN to the server's server.admin_token".to_owned())?;
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let base = args.server.trim_end_matches('/');
    let target = |policy: &str, key: &str| {
        format!(
            "{base}/v1/overrides/{}/{}",
            path_segment(policy.as_bytes()),
            path_segment(key.as_bytes())
        )
    };
    let auth = format!("Bearer {token}");
    match args.action {
        Action::Set {
            policy,
            key,
            limit,
            period,
            burst,
            unlimited,
            blocked,
            expires_in,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(limit) = limit {
                body.insert("limit".into(), limit.into());
            }
            if let Some(period) = period {
                body.insert("period".into(), period.into());
            }
            if let Some(burst) = burst {
                body.insert("burst".into(), burst.into());
            }
            if unlimited {
                body.insert("unlimited".into(), true.into());
            }
            if blocked {
                body.insert("blocked".into(), true.into());
            }
            if let Some(expires_in) = expires_in {
                body.insert("expires_in".into(), expires_in.into());
            }
            let request = client
                .put(target(&policy, &key))
                .header("authorization", &auth)
                .header("content-type", "application/json")
                .body(serde_json::Value::Object(body).to_string());
            send(request).await
        }
        Action::Get { policy, key } => {
            send(
                client
                    .get(target(&policy, &key))
                    .header("authorization", &auth),
            )
            .await
        }
        Action::Delete { policy, key } => send(
            client
                .delete(target(&policy, &key))
                .header("authorization", &auth),
        )
        .await
        .map(|_| format!("deleted the override of `{policy}` for `{key}`")),
        Action::List { policy } => {
            let mut lines = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..MAX_PAGES {
                let mut url = format!("{base}/v1/overrides?limit=1000");
                if let Some(policy) = &policy {
                    url.push_str(&format!("&policy={}", path_segment(policy.as_bytes())));
                }
                if let Some(cursor) = &cursor {
                    url.push_str(&format!("&cursor={cursor}"));
                }
                let text = send(client.get(url).header("authorization", &auth)).await?;
                let page: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| format!("unexpected answer: {e}"))?;
                for item in page["overrides"].as_array().into_iter().flatten() {
                    lines.push(item.to_string());
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => return Ok(lines.join("\n")),
                }
            }
            Err(format!("more than {MAX_PAGES} pages: use the API"))
        }
    }
}

/// Sends `request`: the body of a success, else the problem's detail.
async fn send(request: reqwest::RequestBuilder) -> Result<String, String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach the server: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        return Ok(text);
    }
    let detail = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["detail"].as_str().map(str::to_owned))
        .unwrap_or(text);
    Err(format!("{status}: {detail}"))
}
