//! Fault plan: inject errors, resets, delays and lost responses on the Nth matching request.
//! Deterministic by counts; optionally probabilistic with a seeded RNG.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The kind of request a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `GET /v2/streaming/hostname`.
    Hostname,
    /// `POST /oauth/token`.
    Token,
    /// `PUT …/channels/{channel}`.
    Open,
    /// `POST …/channels/{channel}/rows`.
    Append,
    /// `POST …:bulk-channel-status`.
    Status,
    /// `DELETE …/channels/{channel}`.
    Drop,
    /// `POST …:pipe-info`.
    PipeInfo,
    /// `POST /telemetry/send/sessionless`.
    Telemetry,
    /// Any of the above (never admin requests).
    Any,
}

impl FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.replace('-', "_")))
            .map_err(|_| format!("unknown op {s:?}"))
    }
}

/// What to do to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FaultAction {
    /// `401` (the client refreshes its token and retries).
    Unauthorized,
    /// `404` with a Snowflake code body (non-retryable for the client).
    NotFound,
    /// `404` with an empty body (a "misclassified" load-balancer 404; retried by the client).
    NotFoundEmpty,
    /// `409 ERR_CHANNEL_HAS_UNCOMMITTED_DATA`.
    Conflict,
    /// `429`.
    TooManyRequests,
    /// `500`.
    InternalError,
    /// `503`.
    Unavailable,
    /// Close the connection without any response.
    Reset,
    /// Wait this many milliseconds, then process normally.
    Delay(u64),
    /// Apply the request, then close the connection without a response.
    AppliedThenReset,
    /// Apply the request, then answer 503.
    AppliedThen503,
    /// Expire every scoped token issued so far, then process normally (ingest calls then get 401).
    ExpireTokens,
}

impl FromStr for FaultAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "401" => Self::Unauthorized,
            "404" => Self::NotFound,
            "404-empty" => Self::NotFoundEmpty,
            "409" => Self::Conflict,
            "429" => Self::TooManyRequests,
            "500" => Self::InternalError,
            "503" => Self::Unavailable,
            "reset" => Self::Reset,
            "lost-reset" => Self::AppliedThenReset,
            "lost-503" => Self::AppliedThen503,
            "expire-tokens" => Self::ExpireTokens,
            other => match other.strip_prefix("delay:").map(str::parse::<u64>) {
                Some(Ok(ms)) => Self::Delay(ms),
                _ => return Err(format!(
                    "unknown fault action {s:?} (401, 404, 404-empty, 409, 429, 500, 503, reset, delay:<ms>, lost-reset, lost-503, expire-tokens)"
                )),
            },
        })
    }
}

impl fmt::Display for FaultAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unauthorized => f.write_str("401"),
            Self::NotFound => f.write_str("404"),
            Self::NotFoundEmpty => f.write_str("404-empty"),
            Self::Conflict => f.write_str("409"),
            Self::TooManyRequests => f.write_str("429"),
            Self::InternalError => f.write_str("500"),
            Self::Unavailable => f.write_str("503"),
            Self::Reset => f.write_str("reset"),
            Self::Delay(ms) => write!(f, "delay:{ms}"),
            Self::AppliedThenReset => f.write_str("lost-reset"),
            Self::AppliedThen503 => f.write_str("lost-503"),
            Self::ExpireTokens => f.write_str("expire-tokens"),
        }
    }
}

impl TryFrom<String> for FaultAction {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<FaultAction> for String {
    fn from(a: FaultAction) -> String {
        a.to_string()
    }
}

fn one() -> u64 {
    1
}

/// One rule of a fault plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Which requests match.
    pub op: Op,
    /// Only requests on this channel (case-insensitive) match, if set.
    #[serde(default)]
    pub channel: Option<String>,
    /// Fire from the Nth matching request on (1-based; retries count as requests).
    #[serde(default = "one")]
    pub nth: u64,
    /// How many times to fire (0 = unlimited).
    #[serde(default = "one")]
    pub times: u64,
    /// If set, each eligible request fires with this probability (seeded RNG).
    #[serde(default)]
    pub probability: Option<f64>,
    /// What to do.
    pub action: FaultAction,
}

impl FaultRule {
    /// A rule firing once on the `nth` request of `op`.
    pub fn nth(op: Op, nth: u64, action: FaultAction) -> Self {
        Self {
            op,
            channel: None,
            nth,
            times: 1,
            probability: None,
            action,
        }
    }

    /// Restricts the rule to a channel.
    pub fn on_channel(mut self, channel: &str) -> Self {
        self.channel = Some(channel.to_string());
        self
    }

    /// Sets how many times the rule fires (0 = unlimited).
    pub fn times(mut self, times: u64) -> Self {
        self.times = times;
        self
    }
}

impl FromStr for FaultRule {
    type Err = String;
    /// CLI form: `op=append,action=429[,nth=2][,times=1][,channel=ch1][,p=0.5]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut op, mut action, mut rule) =
            (None, None, FaultRule::nth(Op::Any, 1, FaultAction::Reset));
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("expected key=value, got {part:?}"))?;
            let v = v.trim();
            match k.trim() {
                "op" => op = Some(v.parse()?),
                "action" => action = Some(v.parse()?),
                "nth" => rule.nth = v.parse().map_err(|_| format!("bad nth {v:?}"))?,
                "times" => rule.times = v.parse().map_err(|_| format!("bad times {v:?}"))?,
                "channel" => rule.channel = Some(v.to_string()),
                "p" | "probability" => {
                    rule.probability =
                        Some(v.parse().map_err(|_| format!("bad probability {v:?}"))?)
                }
                other => return Err(format!("unknown fault key {other:?}")),
            }
        }
        rule.op = op.ok_or("fault needs op=")?;
        rule.action = action.ok_or("fault needs action=")?;
        Ok(rule)
    }
}

/// A fault plan as read from JSON: `{"seed": 1, "rules": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    /// Seed for probabilistic rules (default 0).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Rules, checked in order; the first that fires wins.
    #[serde(default)]
    pub rules: Vec<FaultRule>,
}

#[derive(Debug, Clone)]
struct RuleState {
    rule: FaultRule,
    seen: u64,
    fired: u64,
}

/// Stateful matcher for a fault plan.
#[derive(Debug, Clone)]
pub struct FaultEngine {
    rules: Vec<RuleState>,
    rng: StdRng,
}

impl Default for FaultEngine {
    fn default() -> Self {
        Self::new(FaultPlan::default())
    }
}

impl FaultEngine {
    /// Engine for a plan (counters at zero).
    pub fn new(plan: FaultPlan) -> Self {
        let mut e = Self {
            rules: Vec::new(),
            rng: StdRng::seed_from_u64(plan.seed.unwrap_or(0)),
        };
        e.extend(plan.rules);
        e
    }

    /// Adds rules (their counters start now).
    pub fn extend(&mut self, rules: impl IntoIterator<Item = FaultRule>) {
        self.rules.extend(rules.into_iter().map(|rule| RuleState {
            rule,
            seen: 0,
            fired: 0,
        }));
    }

    /// The rules and how often each fired.
    pub fn snapshot(&self) -> Vec<(FaultRule, u64, u64)> {
        self.rules
            .iter()
            .map(|r| (r.rule.clone(), r.seen, r.fired))
            .collect()
    }

    /// Counts a request and returns the action of the first rule that fires for it.
    pub fn check(&mut self, op: Op, channel: Option<&str>) -> Option<FaultAction> {
        let mut hit = None;
        for r in &mut self.rules {
            if r.rule.op != Op::Any && r.rule.op != op {
                continue;
            }
            if let Some(want) = &r.rule.channel {
                if !channel.is_some_and(|c| c.eq_ignore_ascii_case(want)) {
                    continue;
                }
            }
            r.seen += 1;
            if hit.is_some()
                || r.seen < r.rule.nth
                || (r.rule.times != 0 && r.fired >= r.rule.times)
            {
                continue;
            }
            if let Some(p) = r.rule.probability {
                if !self.rng.random_bool(p.clamp(0.0, 1.0)) {
                    continue;
                }
            }
            r.fired += 1;
            hit = Some(r.rule.action);
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fires_on_nth_matching_only() {
        let mut e = FaultEngine::new(FaultPlan {
            seed: None,
            rules: vec![FaultRule::nth(Op::Append, 2, FaultAction::TooManyRequests)],
        });
        assert_eq!(e.check(Op::Open, None), None);
        assert_eq!(e.check(Op::Append, Some("c")), None);
        assert_eq!(e.check(Op::Status, None), None);
        assert_eq!(
            e.check(Op::Append, Some("c")),
            Some(FaultAction::TooManyRequests)
        );
        assert_eq!(e.check(Op::Append, Some("c")), None, "times defaults to 1");
    }

    #[test]
    fn channel_filter_times_and_order() {
        let mut e = FaultEngine::default();
        e.extend([
            FaultRule::nth(Op::Append, 1, FaultAction::Unavailable)
                .on_channel("CH1")
                .times(2),
            FaultRule::nth(Op::Any, 1, FaultAction::Delay(5)).times(0),
        ]);
        assert_eq!(
            e.check(Op::Append, Some("other")),
            Some(FaultAction::Delay(5))
        );
        assert_eq!(
            e.check(Op::Append, Some("ch1")),
            Some(FaultAction::Unavailable)
        );
        assert_eq!(
            e.check(Op::Append, Some("ch1")),
            Some(FaultAction::Unavailable)
        );
        assert_eq!(
            e.check(Op::Append, Some("ch1")),
            Some(FaultAction::Delay(5))
        );
        assert_eq!(e.check(Op::Append, None), Some(FaultAction::Delay(5)));
        let snap = e.snapshot();
        assert_eq!((snap[0].1, snap[0].2), (3, 2));
    }

    #[test]
    fn probabilistic_is_reproducible() {
        let plan = FaultPlan {
            seed: Some(7),
            rules: vec![FaultRule {
                probability: Some(0.5),
                times: 0,
                ..FaultRule::nth(Op::Append, 1, FaultAction::InternalError)
            }],
        };
        let run = |plan: FaultPlan| {
            let mut e = FaultEngine::new(plan);
            (0..200)
                .map(|_| e.check(Op::Append, None).is_some())
                .collect::<Vec<_>>()
        };
        let a = run(plan.clone());
        assert_eq!(a, run(plan));
        let n = a.iter().filter(|x| **x).count();
        assert!((50..150).contains(&n), "{n}");
    }

    #[test]
    fn parse_cli_and_json_forms() {
        let r: FaultRule = "op=append,action=lost-reset,nth=3,channel=gw1"
            .parse()
            .unwrap();
        assert_eq!(r.action, FaultAction::AppliedThenReset);
        assert_eq!((r.nth, r.times, r.channel.as_deref()), (3, 1, Some("gw1")));
        let r: FaultRule = "op=pipe-info,action=delay:250,times=0,p=0.25"
            .parse()
            .unwrap();
        assert_eq!(
            (r.op, r.action, r.probability),
            (Op::PipeInfo, FaultAction::Delay(250), Some(0.25))
        );
        for bad in [
            "",
            "op=append",
            "action=429",
            "op=nope,action=429",
            "op=append,action=418",
            "op=append,action=429,x=1",
            "op=append,action=delay:x",
        ] {
            assert!(bad.parse::<FaultRule>().is_err(), "{bad}");
        }
        let plan: FaultPlan = serde_json::from_str(
            r#"{"seed":3,"rules":[{"op":"append","action":"429"},{"op":"token","nth":2,"action":"404-empty"},{"op":"any","action":"expire-tokens","times":0}]}"#,
        )
        .unwrap();
        assert_eq!(plan.rules.len(), 3);
        assert_eq!(plan.rules[1].action, FaultAction::NotFoundEmpty);
        let back: FaultPlan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
        assert_eq!(back, plan);
        assert!(
            serde_json::from_str::<FaultPlan>(r#"{"rules":[{"op":"append","action":"200"}]}"#)
                .is_err()
        );
        for a in [
            "401",
            "404",
            "404-empty",
            "409",
            "429",
            "500",
            "503",
            "reset",
            "delay:9",
            "lost-reset",
            "lost-503",
            "expire-tokens",
        ] {
            assert_eq!(a.parse::<FaultAction>().unwrap().to_string(), a);
        }
    }
}
