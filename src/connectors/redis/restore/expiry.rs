//! Relative expiries in the journaled command stream made absolute.
//!
//! Redis 7 propagates expiries as absolute times (`PXAT`, `PEXPIREAT`), but
//! Redis 6.2 propagates `SET .. EX`, `SETEX`, `EXPIRE` and friends as sent:
//! relative to when they ran. Replayed later, they would keep a key alive that
//! had expired at the restored moment. A restore therefore rewrites them to
//! absolute Unix-ms times counted from the command's capture time (which trails
//! the primary's clock by the replication delay, usually well under a
//! millisecond).

/// `args` with relative expiries turned absolute, or `None` when unchanged.
pub fn absolutize(args: &[Vec<u8>], capture_ms: i64) -> Option<Vec<Vec<u8>>> {
    let name = args.first()?.to_ascii_lowercase();
    let num = |i: usize| -> Option<i64> { std::str::from_utf8(args.get(i)?).ok()?.parse().ok() };
    let at = |n: i64, unit_ms: i64| {
        (capture_ms.saturating_add(n.saturating_mul(unit_ms)))
            .to_string()
            .into_bytes()
    };
    match name.as_slice() {
        b"set" | b"getex" => {
            let first_opt = if name == b"set" { 3 } else { 2 };
            let mut out = args.to_vec();
            let mut changed = false;
            let mut i = first_opt;
            while i + 1 < out.len() {
                let unit = match out[i].to_ascii_lowercase().as_slice() {
                    b"ex" => 1000,
                    b"px" => 1,
                    _ => {
                        i += 1;
                        continue;
                    }
                };
                let n = num(i + 1)?;
                out[i] = b"PXAT".to_vec();
                out[i + 1] = at(n, unit);
                changed = true;
                i += 2;
            }
            changed.then_some(out)
        }
        b"setex" | b"psetex" if args.len() == 4 => {
            let unit = if name == b"setex" { 1000 } else { 1 };
            Some(vec![
                b"SET".to_vec(),
                args[1].clone(),
                args[3].clone(),
                b"PXAT".to_vec(),
                at(num(2)?, unit),
            ])
        }
        b"expire" | b"pexpire" if args.len() >= 3 => {
            let unit = if name == b"expire" { 1000 } else { 1 };
            let mut out = vec![b"PEXPIREAT".to_vec(), args[1].clone(), at(num(2)?, unit)];
            out.extend(args[3..].iter().cloned());
            Some(out)
        }
        b"expireat" if args.len() >= 3 => {
            let mut out = vec![
                b"PEXPIREAT".to_vec(),
                args[1].clone(),
                num(2)?.saturating_mul(1000).to_string().into_bytes(),
            ];
            out.extend(args[3..].iter().cloned());
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<Vec<u8>> {
        s.iter().map(|x| x.as_bytes().to_vec()).collect()
    }

    #[test]
    fn relative_expiries_become_absolute() {
        let t = 1_000_000;
        assert_eq!(
            absolutize(&v(&["SET", "k", "v", "EX", "5"]), t),
            Some(v(&["SET", "k", "v", "PXAT", "1005000"]))
        );
        assert_eq!(
            absolutize(&v(&["set", "k", "px", "NX", "px", "7"]), t),
            Some(v(&["set", "k", "px", "NX", "PXAT", "1000007"]))
        );
        assert_eq!(
            absolutize(&v(&["SETEX", "k", "2", "v"]), t),
            Some(v(&["SET", "k", "v", "PXAT", "1002000"]))
        );
        assert_eq!(
            absolutize(&v(&["PEXPIRE", "k", "10", "NX"]), t),
            Some(v(&["PEXPIREAT", "k", "1000010", "NX"]))
        );
        assert_eq!(
            absolutize(&v(&["EXPIREAT", "k", "10"]), t),
            Some(v(&["PEXPIREAT", "k", "10000"]))
        );
        assert_eq!(absolutize(&v(&["SET", "k", "v", "PXAT", "5"]), t), None);
        assert_eq!(absolutize(&v(&["SET", "k", "v"]), t), None);
        assert_eq!(absolutize(&v(&["SET", "k", "v", "EX", "x"]), t), None);
    }
}
