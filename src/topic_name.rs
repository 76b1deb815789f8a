//! Topic names: the one rule shared by the HTTP query and the ingest line decoder.
//! A name is 1–200 bytes of `A–Z a–z 0–9 _ - . : / @` (protocol 2).

/// Longest accepted topic name, in bytes.
pub const MAX_LEN: usize = 200;

/// Checks a (percent-decoded) topic name; the error is a one-line reason.
pub fn validate(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty topic name");
    }
    if name.len() > MAX_LEN {
        return Err("topic name longer than 200 bytes");
    }
    if !name.iter().all(|&b| is_topic_byte(b)) {
        return Err("topic name may only hold A-Z a-z 0-9 _ - . : / @");
    }
    Ok(())
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/' | b'@')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_names() {
        for name in [
            "notifications:42",
            "activity:user:7",
            "prices:AAPL",
            "progress:export-19",
            "a/b@c.d_e",
        ] {
            assert_eq!(validate(name.as_bytes()), Ok(()), "{name}");
        }
        assert_eq!(validate(&[b'x'; MAX_LEN]), Ok(()));
    }

    #[test]
    fn refuses_bad_names() {
        assert!(validate(b"").is_err());
        assert!(validate(&[b'x'; MAX_LEN + 1]).is_err());
        for bad in ["a b", "a\nb", "a%b", "a+b", "é", "a\0"] {
            assert!(validate(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
