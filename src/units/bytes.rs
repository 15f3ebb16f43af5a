//! `Bytes`: the one type for memory amounts. Machines get integers (bytes), humans get
//! GiB with two decimals.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Sub};

use crate::error::Error;

/// A number of bytes. Saturating subtraction: memory never goes negative.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

impl Bytes {
    pub const ZERO: Bytes = Bytes(0);
    /// The largest amount any setting accepts, 1 PiB (2^50 bytes): far above any device
    /// or host, and far enough below `u64::MAX` that sums of a few settings cannot wrap.
    pub const MAX_AMOUNT: Bytes = Bytes(1 << 50);
    /// What [`Bytes::parse`] accepts, for messages.
    pub const ACCEPTED: &'static str = "a positive number with a unit: B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal), e.g. 80GiB, or an integer of bytes; at most 1 PiB (1024TiB = 1125899906842624 bytes)";

    pub fn get(self) -> u64 {
        self.0
    }
    pub fn gib(self) -> f64 {
        self.0 as f64 / GIB as f64
    }
    pub fn mib(self) -> f64 {
        self.0 as f64 / MIB as f64
    }
    /// `n` elements of `bytes_per_elem` each (fractional sizes such as 4-bit are
    /// handled by the callers that know the packing).
    pub fn of(n: u64, bytes_per_elem: u64) -> Bytes {
        Bytes(n * bytes_per_elem)
    }
    pub fn scale(self, f: f64) -> Bytes {
        Bytes((self.0 as f64 * f).round().max(0.0) as u64)
    }
    /// Round up to a multiple of `granule` (allocator block sizes).
    pub fn round_up(self, granule: u64) -> Bytes {
        if granule <= 1 {
            return self;
        }
        Bytes(self.0.div_ceil(granule) * granule)
    }

    /// Parse a human amount: `80GiB`, `80 GiB`, `80GB` (decimal), `24g`, `1.5TiB`,
    /// `512MiB` or a plain integer number of bytes.
    pub fn parse(text: &str) -> Result<Bytes, Error> {
        let t = text.trim();
        let bad = || Error::InvalidValue {
            what: "memory amount".into(),
            value: text.to_string(),
            accepted: Bytes::ACCEPTED.into(),
        };
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kib" => KIB as f64,
            "m" | "mib" => MIB as f64,
            "g" | "gib" => GIB as f64,
            "t" | "tib" => (GIB as f64) * 1024.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "tb" => 1e12,
            _ => return Err(bad()),
        };
        let bytes = (value * mult).round();
        if !(value.is_finite() && value > 0.0 && bytes <= Bytes::MAX_AMOUNT.0 as f64) {
            return Err(bad());
        }
        Ok(Bytes(bytes as u64))
    }

    /// `n` bytes when within [`Bytes::MAX_AMOUNT`].
    pub fn bounded(n: u64) -> Result<Bytes, Error> {
        if n <= Bytes::MAX_AMOUNT.0 {
            return Ok(Bytes(n));
        }
        Err(Error::InvalidValue {
            what: "memory amount".into(),
            value: n.to_string(),
            accepted: Bytes::ACCEPTED.into(),
        })
    }
}

impl Bytes {
    /// For humans, in the unit that fits the amount: `512 B`, `12.3 KiB`, `4.56 MiB`,
    /// `7.89 GiB` (3 significant digits from KiB up).
    pub fn human(self) -> String {
        let v = self.0 as f64;
        let (x, unit) = if self.0 < 1 << 10 {
            return format!("{} B", self.0);
        } else if self.0 < 1 << 20 {
            (v / (1u64 << 10) as f64, "KiB")
        } else if self.0 < 1 << 30 {
            (v / (1u64 << 20) as f64, "MiB")
        } else {
            (v / GIB as f64, "GiB")
        };
        let decimals = if x >= 100.0 {
            0
        } else if x >= 10.0 {
            1
        } else {
            2
        };
        format!("{x:.decimals$} {unit}")
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} GiB", self.gib())
    }
}

impl Add for Bytes {
    type Output = Bytes;
    fn add(self, o: Bytes) -> Bytes {
        Bytes(self.0 + o.0)
    }
}
impl AddAssign for Bytes {
    fn add_assign(&mut self, o: Bytes) {
        self.0 += o.0;
    }
}
impl Sub for Bytes {
    type Output = Bytes;
    fn sub(self, o: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(o.0))
    }
}
impl Sum for Bytes {
    fn sum<I: Iterator<Item = Bytes>>(iter: I) -> Bytes {
        Bytes(iter.map(|b| b.0).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(Bytes::parse("80GiB").unwrap(), Bytes(80 * GIB));
        assert_eq!(Bytes::parse("80 GB").unwrap(), Bytes(80_000_000_000));
        assert_eq!(Bytes::parse("1.5g").unwrap(), Bytes(3 * GIB / 2));
        assert_eq!(Bytes::parse("1024").unwrap(), Bytes(1024));
        assert!(Bytes::parse("-3GiB").is_err());
        assert!(Bytes::parse("0GiB").is_err());
        assert!(Bytes::parse("80 parsecs").is_err());
    }

    #[test]
    fn m5_amounts_are_bounded_in_both_forms() {
        assert_eq!(Bytes::parse("1024TiB").unwrap(), Bytes::MAX_AMOUNT);
        assert!(Bytes::parse("1025TiB").is_err());
        assert!(Bytes::parse("18446744073709551615").is_err());
        assert!(Bytes::parse(&(Bytes::MAX_AMOUNT.0 + 1).to_string()).is_err());
        assert!(Bytes::bounded(u64::MAX).is_err());
        assert_eq!(Bytes::bounded(5).unwrap(), Bytes(5));
    }

    #[test]
    fn displays_gib_with_two_decimals() {
        assert_eq!(Bytes(3 * GIB / 2).to_string(), "1.50 GiB");
    }

    #[test]
    fn subtraction_saturates() {
        assert_eq!(Bytes(1) - Bytes(5), Bytes(0));
    }
}
