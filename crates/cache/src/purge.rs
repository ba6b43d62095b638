//! Purge: by URL, prefix, surrogate key (tag) or site; hard (gone) or soft (stale).
//!
//! A purge never walks the store on the caller's path. It records a rule with the next
//! sequence number and returns; every lookup checks the few live rules against the object's
//! `stored_seq` (the sequence number when its fetch *started*, so objects that were in flight
//! when the purge arrived are caught too). A background sweep then removes or marks what the
//! rules match and retires them. That is what keeps a tag purge over a million objects from
//! stalling requests, and what makes it effective for every request that starts after the
//! call returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::object::Object;

/// The JSON body of `POST /purge`: exactly one of `url`, `prefix`, `tag`, `site`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub soft: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `host/path?query`, scheme left out: a purge of a URL covers http and https alike.
    Url(String),
    Prefix(String),
    Tag(String),
    Site(String),
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Url(_) => "url",
            Self::Prefix(_) => "prefix",
            Self::Tag(_) => "tag",
            Self::Site(_) => "site",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub target: Target,
    pub soft: bool,
}

impl PurgeRequest {
    pub fn into_purge(self) -> Result<Purge, String> {
        let given = [&self.url, &self.prefix, &self.tag, &self.site]
            .iter()
            .filter(|f| f.is_some())
            .count();
        if given != 1 {
            return Err(format!(
                "a purge names exactly one of \"url\", \"prefix\", \"tag\" or \"site\" ({given} given)"
            ));
        }
        let target = if let Some(url) = self.url {
            Target::Url(url_without_scheme(&url)?)
        } else if let Some(prefix) = self.prefix {
            Target::Prefix(url_without_scheme(&prefix)?)
        } else if let Some(tag) = self.tag {
            non_empty("tag", &tag)?;
            Target::Tag(tag)
        } else {
            let site = self.site.unwrap_or_default();
            non_empty("site", &site)?;
            Target::Site(site)
        };
        Ok(Purge {
            target,
            soft: self.soft,
        })
    }
}

fn non_empty(field: &str, v: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        return Err(format!("\"{field}\" is empty"));
    }
    Ok(())
}

/// `http://Host:80/p?q` → `host/p?q`. Purges name absolute URLs; the scheme and port do not
/// take part (cache keys have neither a port nor, for purges, a scheme).
fn url_without_scheme(url: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{url:?} is not an absolute URL (http://host/path)"))?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pq = uri.path_and_query().map_or("", |pq| pq.as_str());
    let pq = if pq.is_empty() && !url.ends_with(host.as_str()) {
        "/"
    } else {
        pq
    };
    Ok(format!("{host}{pq}"))
}

/// `scheme://rest` → `rest`.
pub fn strip_scheme(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

#[derive(Debug)]
struct Rule {
    seq: u64,
    purge: Purge,
    created: Instant,
}

impl Rule {
    fn matches(&self, url: &str, site: &str, tags: &[impl AsRef<str>], stored_seq: u64) -> bool {
        if stored_seq >= self.seq {
            return false;
        }
        match &self.purge.target {
            Target::Url(u) => strip_scheme(url) == u,
            Target::Prefix(p) => strip_scheme(url).starts_with(p.as_str()),
            Target::Tag(t) => tags.iter().any(|x| x.as_ref() == t),
            Target::Site(s) => site == s,
        }
    }
}

/// What the live purge rules say about an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Gone,
    Stale,
}

#[derive(Debug, Default)]
pub struct Purges {
    /// The sequence number the next fetch records; purges take the one after.
    seq: AtomicU64,
    rules: ArcSwap<Vec<Arc<Rule>>>,
    write: Mutex<()>,
}

impl Purges {
    pub fn current_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Records a purge; every lookup from now on honours it. Returns its sequence number.
    pub fn add(&self, purge: Purge) -> u64 {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let mut rules: Vec<Arc<Rule>> = self.rules.load().iter().cloned().collect();
        rules.push(Arc::new(Rule {
            seq,
            purge,
            created: Instant::now(),
        }));
        self.rules.store(Arc::new(rules));
        seq
    }

    pub fn verdict(&self, obj: &Object) -> Verdict {
        self.verdict_for(obj.url(), &obj.site, obj.tags(), obj.stored_seq)
    }

    /// `verdict` for an object known only by its metadata (the disk tier's index).
    pub fn verdict_for(&self, url: &str, site: &str, tags: &[impl AsRef<str>], stored_seq: u64) -> Verdict {
        let rules = self.rules.load();
        if rules.is_empty() {
            return Verdict::Keep;
        }
        let mut verdict = Verdict::Keep;
        for rule in rules.iter().filter(|r| r.matches(url, site, tags, stored_seq)) {
            if !rule.purge.soft {
                return Verdict::Gone;
            }
            verdict = Verdict::Stale;
        }
        verdict
    }

    pub fn live_rules(&self) -> usize {
        self.rules.load().len()
    }

    /// Drops the rules created before `before`: the caller has swept every stored object since
    /// then, and no fetch that started before them can still be stored. When it dropped any,
    /// returns the sequence number from which rules are still live (every purge before it is
    /// retired).
    pub fn retire(&self, before: Instant) -> Option<u64> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let all = self.rules.load();
        let rules: Vec<Arc<Rule>> = all.iter().filter(|r| r.created >= before).cloned().collect();
        if rules.len() == all.len() {
            return None;
        }
        let live_from = rules
            .iter()
            .map(|r| r.seq)
            .min()
            .unwrap_or(self.current_seq() + 1);
        self.rules.store(Arc::new(rules));
        Some(live_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::CacheKey;

    fn req(json: &str) -> Result<Purge, String> {
        serde_json::from_str::<PurgeRequest>(json)
            .map_err(|e| e.to_string())?
            .into_purge()
    }

    #[test]
    fn requests_name_exactly_one_target() {
        assert_eq!(
            req(r#"{"url":"https://A.test:8443/x?y"}"#).unwrap().target,
            Target::Url("a.test/x?y".into())
        );
        assert!(req(r#"{"tag":"a","site":"b"}"#)
            .unwrap_err()
            .contains("exactly one"));
        assert!(req(r#"{}"#).unwrap_err().contains("exactly one"));
        assert!(req(r#"{"url":"/relative"}"#).unwrap_err().contains("absolute"));
        assert!(req(r#"{"tag":""}"#).unwrap_err().contains("empty"));
        assert!(
            req(r#"{"tag":"a","hard":true}"#).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn rules_apply_to_objects_stored_before_them_only() {
        let purges = Purges::default();
        let key = CacheKey::for_url("http://a.test/img/1.png").unwrap();
        let stored_now = |purges: &Purges| {
            crate::object::Object::new(
                &key,
                "site".into(),
                http::StatusCode::OK,
                Default::default(),
                Default::default(),
                crate::object::tests_support::freshness(),
                Box::new([]),
                purges.current_seq(),
            )
        };
        let old = stored_now(&purges);
        purges.add(req(r#"{"prefix":"http://a.test/img/","soft":true}"#).unwrap());
        assert_eq!(purges.verdict(&old), Verdict::Stale);
        purges.add(req(r#"{"site":"site"}"#).unwrap());
        assert_eq!(purges.verdict(&old), Verdict::Gone);
        assert_eq!(purges.verdict(&stored_now(&purges)), Verdict::Keep);
        assert_eq!(purges.retire(Instant::now()), Some(purges.current_seq() + 1));
        assert_eq!(purges.live_rules(), 0);
        assert_eq!(purges.retire(Instant::now()), None, "nothing left to retire");
    }
}
