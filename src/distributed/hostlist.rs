//! The first host of a Slurm host list (`SLURM_JOB_NODELIST`), where rank 0 hosts the store.

/// What is wrong with a Slurm host list; the message continues "the list ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostListError {
    /// Nothing but spaces.
    #[error("is empty")]
    Empty,
    /// `[` inside a bracket group.
    #[error("has a bracket inside a bracket")]
    NestedBracket,
    /// A `[` never closed.
    #[error("has a '[' without its ']'")]
    Unclosed,
    /// A `]` never opened.
    #[error("has a ']' without its '['")]
    Unopened,
    /// White space inside a name.
    #[error("has a space inside a host name")]
    Space,
    /// Two commas in a row, or one at either end.
    #[error("has an empty host name")]
    EmptyName,
    /// `[]`.
    #[error("has an empty []")]
    EmptyGroup,
    /// A range that is not `lo` or `lo-hi` in digits.
    #[error("has {range:?} in [{group}], not a number or a range such as 01-04")]
    NotNumber {
        /// The range.
        range: String,
        /// Its bracket group.
        group: String,
    },
    /// A number beyond 64 bits.
    #[error("has {number:?} in [{group}], too large a number")]
    TooLarge {
        /// The number.
        number: String,
        /// Its bracket group.
        group: String,
    },
    /// `hi` below `lo`.
    #[error("has the range {range:?} in [{group}], which runs backwards")]
    Backwards {
        /// The range.
        range: String,
        /// Its bracket group.
        group: String,
    },
}

/// The first host of a Slurm host list in its compressed form (`scontrol show hostnames`
/// expands the same syntax): hosts separated by commas, each a name with any number of
/// bracket groups of ranges, `gpu[01-04,07],cpu1` giving `gpu01` and `rack[2-3]-n[05-06]`
/// giving `rack2-n05` (a range's first number keeps its zero padding). The whole list is
/// checked, not only its first host: a list Slurm would not have written (`gpu[01-`, an
/// empty group, a range running backwards) is an error saying what is wrong, since a
/// guessed host would send every rank to the wrong store.
///
/// A short parser for the one host we need, rather than a crate that expands whole lists
/// (`hostlist-parser` does, with a parser-combinator dependency tree for this one call).
pub fn first_host(list: &str) -> Result<String, HostListError> {
    let list = list.trim();
    if list.is_empty() {
        return Err(HostListError::Empty);
    }
    let mut first = None;
    let mut host = String::new();
    let mut chars = list.chars().peekable();
    loop {
        match chars.next() {
            Some('[') => {
                let mut group = String::new();
                loop {
                    match chars.next() {
                        Some(']') => break,
                        Some('[') => return Err(HostListError::NestedBracket),
                        Some(c) => group.push(c),
                        None => return Err(HostListError::Unclosed),
                    }
                }
                host.push_str(&first_of_ranges(&group)?);
            }
            Some(']') => return Err(HostListError::Unopened),
            Some(c) if c.is_whitespace() => return Err(HostListError::Space),
            Some(',') | None => {
                if host.is_empty() {
                    return Err(HostListError::EmptyName);
                }
                first.get_or_insert(std::mem::take(&mut host));
                if chars.peek().is_none() {
                    // `a,` ends with an empty name; `a` ends here.
                    if list.ends_with(',') {
                        return Err(HostListError::EmptyName);
                    }
                    break;
                }
            }
            Some(c) => host.push(c),
        }
    }
    first.ok_or(HostListError::Empty)
}

/// The first number of a bracket group's ranges (`01-04,07` gives `01`), after checking
/// every range: digits, `lo` or `lo-hi` with `lo <= hi`.
fn first_of_ranges(group: &str) -> Result<String, HostListError> {
    if group.is_empty() {
        return Err(HostListError::EmptyGroup);
    }
    let mut first = None;
    for range in group.split(',') {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        let number = |s: &str| -> Result<u64, HostListError> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HostListError::NotNumber { range: range.into(), group: group.into() });
            }
            s.parse().map_err(|_| HostListError::TooLarge { number: s.into(), group: group.into() })
        };
        if number(lo)? > number(hi)? {
            return Err(HostListError::Backwards { range: range.into(), group: group.into() });
        }
        first.get_or_insert_with(|| lo.to_string());
    }
    Ok(first.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    /// The first host of `list`, or why not as the message.
    fn first_host(list: &str) -> Result<String, String> {
        super::first_host(list).map_err(|e| e.to_string())
    }

    #[test]
    fn first_hosts_of_compressed_lists() {
        for (list, first) in [
            ("gpu[01-04,07]", "gpu01"),
            ("gpu[07,01-04]", "gpu07"),
            ("node1,node2", "node1"),
            ("n[5-6],m1", "n5"),
            ("rack[2-3]-n[05-06]", "rack2-n05"),
            ("a[1-3,5]", "a1"),
            ("a[1-2]-ib", "a1-ib"),
            ("gpu[001-010],cpu[1-2]", "gpu001"),
            ("x[0]", "x0"),
            ("[1-2]a", "1a"),
            ("single", "single"),
            (" padded[8-9] ", "padded8"),
        ] {
            assert_eq!(first_host(list).as_deref(), Ok(first), "{list}");
        }
    }

    #[test]
    fn malformed_host_lists_are_refused_with_the_reason() {
        for (bad, why) in [
            ("", "empty"),
            ("gpu[01-", "without its ']'"),
            ("gpu[01-04", "without its ']'"),
            ("gpu[]", "empty []"),
            ("gpu[a-b]", "not a number"),
            ("gpu[1-]", "not a number"),
            ("gpu[-1]", "not a number"),
            ("gpu[1-3-5]", "not a number"),
            ("gpu[1,]", "not a number"),
            ("gpu[5-3]", "runs backwards"),
            ("gpu[1-[2]]", "inside a bracket"),
            ("gpu]1", "without its '['"),
            ("[", "without its ']'"),
            ("a b", "space"),
            ("a,,b", "empty host name"),
            (",a", "empty host name"),
            ("a,", "empty host name"),
            ("a,b[1-", "without its ']'"),
            ("gpu[99999999999999999999]", "too large"),
        ] {
            let e = first_host(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e:?} does not say {why:?}");
        }
    }

    /// Random well-formed lists (names, zero-padded ranges, several groups and hosts) give
    /// the first host built alongside them; each cut short inside a bracket is refused.
    #[test]
    fn random_well_formed_lists_give_their_first_host_and_truncations_inside_brackets_fail() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..2000 {
            let (mut list, mut expected) = (String::new(), None);
            for h in 0..1 + next(3) {
                if h > 0 {
                    list.push(',');
                }
                let mut host = String::new();
                for part in 0..1 + next(3) {
                    let name: String = (0..next(4)).map(|_| (b'a' + next(26) as u8) as char).collect();
                    let name = if part == 0 && name.is_empty() { "n".to_string() } else { name };
                    list.push_str(&name);
                    host.push_str(&name);
                    if next(3) > 0 {
                        let width = 1 + next(3) as usize;
                        let ranges: Vec<(u64, u64)> = (0..1 + next(3))
                            .map(|_| {
                                let lo = next(50);
                                (lo, lo + next(3) * next(20))
                            })
                            .collect();
                        let text: Vec<String> = ranges
                            .iter()
                            .map(|&(lo, hi)| {
                                if lo == hi && next(2) == 0 {
                                    format!("{lo:0width$}")
                                } else {
                                    format!("{lo:0width$}-{hi:0width$}")
                                }
                            })
                            .collect();
                        list.push_str(&format!("[{}]", text.join(",")));
                        host.push_str(&format!("{:0width$}", ranges[0].0));
                    }
                }
                expected.get_or_insert(host);
            }
            assert_eq!(first_host(&list), Ok(expected.unwrap()), "{list}");
            for (cut, _) in
                list.char_indices().filter(|&(i, _)| list[..i].matches('[').count() > list[..i].matches(']').count())
            {
                assert!(first_host(&list[..cut]).is_err(), "{:?} (cut from {list:?}) was accepted", &list[..cut]);
            }
        }
    }
}
