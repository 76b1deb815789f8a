//! The Origin policy (SPEC 4): which origins may read streams from a browser, and the CORS
//! headers their answers carry (errors included). Pure; an empty list means no Origin
//! check and no CORS headers.

/// `Access-Control-Max-Age` of a preflight answer, in seconds.
pub const PREFLIGHT_MAX_AGE: &str = "600";

#[derive(Debug, Clone, Default)]
pub struct Cors {
    allowed: Vec<String>,
    credentials: bool,
}

/// What the policy says about a request's `Origin`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// No Origin, or no policy: no CORS headers.
    NotCors,
    /// Allowed: echo this origin.
    Allowed(&'a str),
    /// Refused with 403.
    Refused,
}

impl Cors {
    pub fn new(allowed: &[String], credentials: bool) -> Cors {
        Cors {
            allowed: allowed
                .iter()
                .map(|o| o.trim_end_matches('/').to_string())
                .collect(),
            credentials,
        }
    }

    pub fn verdict<'a>(&self, origin: Option<&'a str>) -> Verdict<'a> {
        match origin {
            None => Verdict::NotCors,
            Some(_) if self.allowed.is_empty() => Verdict::NotCors,
            Some(o) if self.allowed.iter().any(|a| a == o || a == "*") => Verdict::Allowed(o),
            Some(_) => Verdict::Refused,
        }
    }

    /// Headers for an answer to an allowed origin.
    pub fn headers<'a>(&self, origin: &'a str, out: &mut Vec<(&'static str, &'a str)>) {
        out.push(("Access-Control-Allow-Origin", origin));
        out.push(("Vary", "Origin"));
        if self.credentials {
            out.push(("Access-Control-Allow-Credentials", "true"));
        }
    }

    /// Extra headers of the `OPTIONS` preflight answer.
    pub fn preflight_headers(out: &mut Vec<(&'static str, &'static str)>) {
        out.push(("Access-Control-Allow-Methods", "GET, HEAD"));
        out.push((
            "Access-Control-Allow-Headers",
            "Authorization, Last-Event-ID, Cache-Control",
        ));
        out.push(("Access-Control-Max-Age", PREFLIGHT_MAX_AGE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let none = Cors::new(&[], false);
        assert_eq!(none.verdict(Some("https://evil.example")), Verdict::NotCors);
        let c = Cors::new(
            &[
                "https://app.example".into(),
                "http://localhost:3000/".into(),
            ],
            true,
        );
        assert_eq!(c.verdict(None), Verdict::NotCors);
        assert_eq!(
            c.verdict(Some("https://app.example")),
            Verdict::Allowed("https://app.example")
        );
        assert_eq!(
            c.verdict(Some("http://localhost:3000")),
            Verdict::Allowed("http://localhost:3000")
        );
        assert_eq!(
            c.verdict(Some("https://app.example.evil")),
            Verdict::Refused
        );
        assert_eq!(c.verdict(Some("null")), Verdict::Refused);
        let mut h = Vec::new();
        c.headers("https://app.example", &mut h);
        assert_eq!(h.len(), 3);
        assert_eq!(h[2], ("Access-Control-Allow-Credentials", "true"));
    }
}
