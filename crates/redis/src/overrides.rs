//! Run-time overrides shared through Redis (`tollgate::overrides`).
//!
//! One hash, `<prefix>:{%overrides}`, holds every override: the field is
//! the (policy, key) pair as [`composite`] bytes, the value the override's
//! text ([`Override::encode`]). A counter, `<prefix>:{%overrides}:version`,
//! moves with every change; each instance reads it every few hundred
//! milliseconds and the whole hash when it moved
//! ([`tollgate::overrides::follow`]). Both keys share one hash tag, so a
//! Cluster keeps them on one node, and the tag `%overrides` is one escaping
//! never produces for an identity (`%` is only ever followed by `25`, `7B`
//! or `7D`, or stands alone), so no state key can take either name.
//!
//! Why a followed copy rather than a lookup inside the decision script: a
//! decision then costs Redis nothing more (no extra key read per check, no
//! second key in the script, which in a Cluster would have to share the
//! identity's slot), and a key with no override costs one hash lookup in
//! process memory. The price is propagation: a change is in force on
//! every instance within the follow interval, not at once.

use redis::Cmd;
use tollgate::StoreError;
use tollgate::overrides::{Override, OverrideStore, composite, split};

use crate::RedisStore;

/// Sets or deletes one field and moves the version, refusing a new field
/// when the hash holds `ARGV[3]` already (-1). A delete with `ARGV[4]`
/// deletes only if the field still holds that value (a sweep must not
/// delete an override set again since it read the old one).
const PUT: &str = r"
if ARGV[2] == '' then
  if ARGV[4] and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[4] then return 0 end
  local n = redis.call('HDEL', KEYS[1], ARGV[1])
  if n > 0 then redis.call('INCR', KEYS[2]) end
  return n
end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
    and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return 1
";

/// Fields and values, as `HSCAN` returns them.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Fields read per `HSCAN` step.
const SCAN_COUNT: usize = 1000;

impl RedisStore {
    fn overrides_key(&self) -> String {
        format!("{}:{{%overrides}}", self.prefix())
    }

    fn overrides_version_key(&self) -> String {
        format!("{}:{{%overrides}}:version", self.prefix())
    }

    async fn put(
        &self,
        field: &[u8],
        value: &str,
        max: usize,
        if_still: Option<&[u8]>,
    ) -> Result<i64, StoreError> {
        let mut cmd = Cmd::new();
        cmd.arg("EVAL")
            .arg(PUT)
            .arg(2)
            .arg(self.overrides_key())
            .arg(self.overrides_version_key())
            .arg(field)
            .arg(value)
            .arg(max);
        if let Some(expected) = if_still {
            cmd.arg(expected);
        }
        self.run_command(&cmd).await
    }

    /// Every field and value of the hash, in `HSCAN` steps.
    async fn scan_overrides(&self) -> Result<Fields, StoreError> {
        let key = self.overrides_key();
        let mut cursor = 0u64;
        let mut out = Vec::new();
        loop {
            let mut cmd = redis::cmd("HSCAN");
            cmd.arg(&key).arg(cursor).arg("COUNT").arg(SCAN_COUNT);
            let (next, page): (u64, Fields) = self.run_command(&cmd).await?;
            out.extend(page);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Deletes the overrides that have ended (by the store's time), so
    /// that they stop counting against the cap: each only if it still
    /// holds what was read (not one set again meanwhile). Entries this
    /// version cannot read (another version's) are left alone.
    async fn sweep_overrides(&self) -> Result<(), StoreError> {
        let now = self.now_us().await?;
        let ended: Fields = self
            .scan_overrides()
            .await?
            .into_iter()
            .filter(|(_, value)| {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(Override::decode)
                    .is_some_and(|o| !o.live(now))
            })
            .collect();
        for (field, value) in ended {
            self.put(&field, "", 0, Some(&value)).await?;
        }
        Ok(())
    }

    async fn now_us(&self) -> Result<u64, StoreError> {
        let (secs, micros): (u64, u64) = self.run_command(&redis::cmd("TIME")).await?;
        Ok(secs * 1_000_000 + micros)
    }
}

impl OverrideStore for RedisStore {
    async fn put_override(
        &self,
        policy: &str,
        key: &[u8],
        value: &Override,
        max: usize,
    ) -> Result<bool, StoreError> {
        let field = composite(policy, key);
        let text = value.encode();
        if self.put(&field, &text, max, None).await? >= 0 {
            return Ok(true);
        }
        // Full: ended overrides may be holding the room.
        self.sweep_overrides().await?;
        Ok(self.put(&field, &text, max, None).await? >= 0)
    }

    async fn delete_override(&self, policy: &str, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.put(&composite(policy, key), "", 0, None).await? > 0)
    }

    async fn override_version(&self) -> Result<u64, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.overrides_version_key());
        let version: Option<u64> = self.run_command(&cmd).await?;
        Ok(version.unwrap_or(0))
    }

    async fn load_overrides(&self) -> Result<Vec<(String, Vec<u8>, Override)>, StoreError> {
        Ok(self
            .scan_overrides()
            .await?
            .into_iter()
            .filter_map(|(field, value)| {
                let (policy, key) = split(&field)?;
                let value = Override::decode(std::str::from_utf8(&value).ok()?)?;
                Some((policy.to_owned(), key.to_vec(), value))
            })
            .collect())
    }
}
