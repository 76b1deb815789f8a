//! Re-checking open streams after a reload that changed `auth.*` or `cors.*` (protocol 4):
//! which streams the new policy no longer allows, from the little each stream keeps (its
//! topics, whether a token opened it and when that token runs out, a hash of its
//! `Origin`). A pure decision; `ops::apply_reload` acts on it.

use crate::auth::Auth;
use crate::http::cors::Cors;
use crate::timer::Millis;

/// The policies before and after a reload.
pub(super) struct Change<'a> {
    pub old_auth: &'a Auth,
    pub new_auth: &'a Auth,
    pub new_cors: &'a Cors,
    /// A token verification input changed (see `key_changed`): no old token can be proven
    /// valid under the new policy.
    pub key_changed: bool,
}

/// What an open stream keeps for the re-check.
pub(super) struct Kept<T> {
    pub topics: T,
    /// Opened with a token: when it runs out (loop ms, `exp` + leeway).
    pub token_deadline: Option<Millis>,
    /// `cors::origin_hash` of the request's `Origin`, when it had one.
    pub origin: Option<u64>,
}

/// Why a stream is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
    /// Its `Origin` is refused by the new CORS policy.
    Origin,
    /// It was opened with a token and the token key (or another verification input)
    /// changed.
    TokenKey,
    /// One of its topics became private: anonymous streams, and token streams whose token
    /// was never checked against that topic.
    NowPrivate,
}

/// The re-check's decision for one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Keep,
    /// Still allowed; its token now runs out at this time (`auth.leeway` changed).
    NewDeadline(Millis),
    /// Its token ran out under the new `auth.leeway`: close at once, as at expiry.
    Expired,
    /// No longer allowed: a `retry:`, then closed, so that it reconnects and is checked
    /// afresh.
    End(Rule),
}

/// Whether a changed key is a token verification input: every `auth.*` key except the
/// ones that only say which topics need a token, where the token is read from, and the
/// clock leeway (handled by moving deadlines). By prefix, so keys added later (such as an
/// audience or issuer) count without being listed here.
pub(super) fn key_changed(changed: &[&str]) -> bool {
    changed.iter().any(|k| {
        k.starts_with("auth.") && !matches!(*k, "auth.private" | "auth.cookie" | "auth.leeway")
    })
}

/// Decides whether an open stream is still allowed under `change`'s new policy, at loop
/// time `now`. Only what may have changed is checked; what was allowed at subscribe time
/// under the old policy and is unaffected stays allowed.
pub(super) fn recheck<'a, T>(change: &Change<'_>, stream: Kept<T>, now: Millis) -> Outcome
where
    T: IntoIterator<Item = &'a str>,
{
    if let Some(hash) = stream.origin
        && !change.new_cors.allows_hash(hash)
    {
        return Outcome::End(Rule::Origin);
    }
    let token = stream.token_deadline.is_some();
    if token && change.key_changed {
        return Outcome::End(Rule::TokenKey);
    }
    // A token stream's claims are not kept: the token covered the topics that were private
    // when it was checked, and nothing more is known about it.
    let (old, new) = (change.old_auth, change.new_auth);
    if stream
        .topics
        .into_iter()
        .any(|t| new.is_private(t) && (!token || !old.is_private(t)))
    {
        return Outcome::End(Rule::NowPrivate);
    }
    match stream.token_deadline {
        Some(deadline) if new.leeway_s() != old.leeway_s() => {
            let moved = if new.leeway_s() > old.leeway_s() {
                deadline.saturating_add((new.leeway_s() - old.leeway_s()).saturating_mul(1000))
            } else {
                deadline.saturating_sub((old.leeway_s() - new.leeway_s()).saturating_mul(1000))
            };
            if moved <= now {
                Outcome::Expired
            } else {
                Outcome::NewDeadline(moved)
            }
        }
        _ => Outcome::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::http::cors::origin_hash;
    use std::time::Duration;

    fn auth(private: &[&str], leeway_s: u64) -> Auth {
        Auth::from_config(&config::Auth {
            secret: "s3cret".into(),
            private: private.iter().map(|p| (*p).to_string()).collect(),
            leeway: Duration::from_secs(leeway_s),
            ..config::Auth::default()
        })
        .unwrap()
    }

    fn kept<'a>(
        topics: &'a [&'a str],
        token_deadline: Option<Millis>,
        origin: Option<&str>,
    ) -> Kept<impl IntoIterator<Item = &'a str>> {
        Kept {
            topics: topics.iter().copied(),
            token_deadline,
            origin: origin.map(origin_hash),
        }
    }

    #[test]
    fn which_keys_are_token_keys() {
        assert!(key_changed(&["auth.secret"]));
        assert!(key_changed(&["auth.public_key", "streams.keepalive"]));
        assert!(key_changed(&["auth.audience"]), "by prefix");
        assert!(!key_changed(&[
            "auth.private",
            "auth.cookie",
            "auth.leeway"
        ]));
        assert!(!key_changed(&["cors.allowed_origins", "log.level"]));
    }

    #[test]
    fn the_reported_bypass_is_closed() {
        // Anonymous on `later:1` and a token on `priv:a`; the secret rotates and `later:*`
        // becomes private.
        let old = auth(&["priv:*"], 30);
        let new = auth(&["priv:*", "later:*"], 30);
        let cors = Cors::default();
        let change = Change {
            old_auth: &old,
            new_auth: &new,
            new_cors: &cors,
            key_changed: key_changed(&["auth.secret", "auth.private"]),
        };
        assert_eq!(
            recheck(&change, kept(&["later:1"], None, None), 0),
            Outcome::End(Rule::NowPrivate)
        );
        assert_eq!(
            recheck(&change, kept(&["priv:a"], Some(60_000), None), 0),
            Outcome::End(Rule::TokenKey)
        );
        assert_eq!(
            recheck(&change, kept(&["news"], None, None), 0),
            Outcome::Keep
        );
    }

    #[test]
    fn newly_private_topics() {
        let old = auth(&["priv:*"], 30);
        let new = auth(&["priv:*", "other:*"], 30);
        let cors = Cors::default();
        let change = Change {
            old_auth: &old,
            new_auth: &new,
            new_cors: &cors,
            key_changed: false,
        };
        // A token stream whose private topics were all private before stays...
        assert_eq!(
            recheck(&change, kept(&["priv:a", "news"], Some(60_000), None), 0),
            Outcome::Keep
        );
        // ...one with a topic that became private ends (its claims are not kept)...
        assert_eq!(
            recheck(&change, kept(&["priv:a", "other:1"], Some(60_000), None), 0),
            Outcome::End(Rule::NowPrivate)
        );
        // ...and so does an anonymous stream on it; public topics stay public.
        assert_eq!(
            recheck(&change, kept(&["news", "other:1"], None, None), 0),
            Outcome::End(Rule::NowPrivate)
        );
        assert_eq!(
            recheck(&change, kept(&["news"], None, None), 0),
            Outcome::Keep
        );
        // Fewer private topics never ends a stream.
        let fewer = Change {
            old_auth: &new,
            new_auth: &old,
            new_cors: &cors,
            key_changed: false,
        };
        assert_eq!(
            recheck(&fewer, kept(&["priv:a", "other:1"], Some(60_000), None), 0),
            Outcome::Keep
        );
    }

    #[test]
    fn origins() {
        let a = auth(&[], 30);
        let cors = Cors::new(&["https://app.example/".into()], false);
        let change = Change {
            old_auth: &a,
            new_auth: &a,
            new_cors: &cors,
            key_changed: false,
        };
        let with = |o| recheck(&change, kept(&["news"], None, Some(o)), 0);
        assert_eq!(with("https://app.example"), Outcome::Keep);
        assert_eq!(with("https://evil.example"), Outcome::End(Rule::Origin));
        assert_eq!(with("https://app.example/"), Outcome::End(Rule::Origin));
        assert_eq!(
            recheck(&change, kept(&["news"], None, None), 0),
            Outcome::Keep,
            "no Origin, no check"
        );
        let open = Cors::new(&[], false);
        let any = Cors::new(&["*".into()], false);
        for cors in [&open, &any] {
            let change = Change {
                new_cors: cors,
                ..change
            };
            assert_eq!(
                recheck(
                    &change,
                    kept(&["news"], None, Some("https://evil.example")),
                    0
                ),
                Outcome::Keep
            );
        }
    }

    #[test]
    fn leeway_moves_deadlines() {
        let (l30, l90, l0) = (auth(&["p"], 30), auth(&["p"], 90), auth(&["p"], 0));
        let cors = Cors::default();
        let change = |old, new| Change {
            old_auth: old,
            new_auth: new,
            new_cors: &cors,
            key_changed: false,
        };
        let token = |deadline| kept(&["p"], Some(deadline), None);
        assert_eq!(
            recheck(&change(&l30, &l90), token(100_000), 50_000),
            Outcome::NewDeadline(160_000)
        );
        assert_eq!(
            recheck(&change(&l30, &l0), token(100_000), 50_000),
            Outcome::NewDeadline(70_000)
        );
        assert_eq!(
            recheck(&change(&l30, &l0), token(100_000), 70_000),
            Outcome::Expired,
            "already past"
        );
        assert_eq!(
            recheck(&change(&l30, &l0), token(10_000), 0),
            Outcome::Expired,
            "no underflow"
        );
        assert_eq!(
            recheck(&change(&l30, &l30), token(100_000), 0),
            Outcome::Keep
        );
        // Anonymous streams have no deadline to move.
        assert_eq!(
            recheck(&change(&l30, &l0), kept(&["q"], None, None), 0),
            Outcome::Keep
        );
    }
}
