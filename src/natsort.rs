//! Natural ordering of names: digit runs compare as numbers, so `layers.2`
//! sorts before `layers.10` and `epoch_9` before `epoch_10`.

use std::cmp::Ordering;

/// Compares two strings, treating each run of ASCII digits as one number.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    // Skip the common prefix (names in one folder share most of theirs),
    // back to the start of any digit run it cuts: that is where the
    // comparison of runs has to begin.
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut start = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    while start > 0 && a[start - 1].is_ascii_digit() {
        start -= 1;
    }
    compare(&a[start..], &b[start..], false)
}

/// Compares two values of a setting (a metadata column such as `lr` or
/// `init`): as numbers where both are numbers, else as [`natural_cmp`]
/// does, except that the digits after a decimal point are the fraction they
/// are (`normal-0.05` before `normal-0.5`, where layer names would put
/// `.5` before `.05`).
pub fn value_cmp(a: &str, b: &str) -> Ordering {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y).then_with(|| natural_cmp(a, b)),
        _ => compare(a.as_bytes(), b.as_bytes(), true),
    }
}

/// The comparison of [`natural_cmp`] from the start of a digit run or of
/// the strings; with `fractions`, a digit run after `digits.` compares as
/// a decimal fraction.
fn compare(mut a: &[u8], mut b: &[u8], fractions: bool) -> Ordering {
    // True while the text just compared (alike on both sides) is a digit
    // run and a decimal point.
    let mut after_point = false;
    let mut after_digits = false;
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (da, ra) = split_digits(a);
                let (db, rb) = split_digits(b);
                let ord = if fractions && after_point {
                    // Digit by digit; trailing zeros add nothing but length.
                    let (ta, tb) = (trim_trailing_zeros(da), trim_trailing_zeros(db));
                    ta.cmp(tb).then_with(|| da.len().cmp(&db.len()))
                } else {
                    let (ta, tb) = (trim_zeros(da), trim_zeros(db));
                    ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb)).then_with(|| da.len().cmp(&db.len()))
                };
                if ord != Ordering::Equal {
                    return ord;
                }
                (a, b) = (ra, rb);
                (after_digits, after_point) = (true, false);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                after_point = after_digits && *x == b'.';
                after_digits = false;
                (a, b) = (&a[1..], &b[1..]);
            }
        }
    }
}

/// Sorts `v` in natural order of `key` (stable). Names whose natural order
/// is their byte order (zero-padded numbers, as most tools write them) cost
/// a byte sort and one pass that checks it.
pub fn sort_natural_by<T>(v: &mut [T], key: impl Fn(&T) -> &str) {
    v.sort_by(|a, b| key(a).cmp(key(b)));
    if !v.windows(2).all(|w| natural_cmp(key(&w[0]), key(&w[1])).is_le()) {
        v.sort_by(|a, b| natural_cmp(key(a), key(b)));
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    s.split_at(n)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&c| c == b'0').count();
    &s[n..]
}

fn trim_trailing_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().rev().take_while(|&&c| c == b'0').count();
    &s[..s.len() - n]
}

#[cfg(test)]
mod tests {
    use super::{natural_cmp, sort_natural_by, value_cmp};

    #[test]
    fn digit_runs_compare_as_numbers() {
        let mut v = vec!["layers.10.weight", "layers.2.weight", "layers.1.weight", "head", "layers.02.weight"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["head", "layers.1.weight", "layers.2.weight", "layers.02.weight", "layers.10.weight"]);
        // Runs that the common prefix cuts: `19` against `2`, `100` against `99`.
        let mut v = vec!["ckpt_19", "ckpt_2", "ckpt_100", "ckpt_99", "ckpt_1a", "ckpt_1"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["ckpt_1", "ckpt_1a", "ckpt_2", "ckpt_19", "ckpt_99", "ckpt_100"]);
    }

    #[test]
    fn setting_values_sort_as_the_numbers_they_hold() {
        let mut v = vec!["normal-0.5", "normal-0.05", "he", "normal-0.10", "normal-0.1", "normal-1.5", "normal-0.25"];
        v.sort_by(|a, b| value_cmp(a, b));
        assert_eq!(v, ["he", "normal-0.05", "normal-0.1", "normal-0.10", "normal-0.25", "normal-0.5", "normal-1.5"]);
        let mut v = vec!["1e-3", "0.01", "1e-4", "10", "9", "-2"];
        v.sort_by(|a, b| value_cmp(a, b));
        assert_eq!(v, ["-2", "1e-4", "1e-3", "0.01", "9", "10"]);
        // Layer names keep their runs as integers.
        assert!(natural_cmp("layers.1.9", "layers.1.10").is_lt());
        assert!(value_cmp("seed2", "seed10").is_lt());
    }

    #[test]
    fn sorting_takes_byte_order_only_where_it_is_natural() {
        let mut padded: Vec<String> = (0..50).rev().map(|i| format!("e{i:03}")).collect();
        sort_natural_by(&mut padded, |s| s);
        assert_eq!(padded, (0..50).map(|i| format!("e{i:03}")).collect::<Vec<_>>());
        let mut v = vec!["b_10", "a_9", "b_9", "a_10", "b_100"];
        sort_natural_by(&mut v, |s| s);
        assert_eq!(v, ["a_9", "a_10", "b_9", "b_10", "b_100"]);
    }
}
