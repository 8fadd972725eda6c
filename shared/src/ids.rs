//! Identifier newtypes. Each one is validated when it is made, by `parse` or by
//! deserialisation, so that a value of these types is always well formed: 1 to 64
//! characters from `A-Z a-z 0-9 . _ -`, which keeps ids safe in URLs, sled keys,
//! logs and HTML without escaping surprises.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest identifier accepted anywhere.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_ID_LEN} characters")]
    TooLong,
    #[error("may only contain letters, digits, '.', '_' and '-'")]
    BadCharacter,
}

fn check_id(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(IdError::BadCharacter);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `raw` and wraps it.
            pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
                let raw = raw.into();
                check_id(&raw)?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(raw: String) -> Result<Self, IdError> {
                Self::parse(raw)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A node of the supply chain: manufacturer, warehouse or seller.
    NodeId
);
id_type!(
    /// A catalogue item, for example a toner cartridge model.
    ItemId
);
id_type!(
    /// A customer (the ordering party).
    CustomerId
);
id_type!(
    /// The login name of an account.
    Username
);
id_type!(
    /// A handheld or browser that holds a session; refresh tokens are bound to it
    /// and revoking it cuts off every session it holds.
    DeviceId
);

id_type!(
    /// A draft order, until it is confirmed or cancelled. The server makes these
    /// (time-ordered UUIDs).
    OrderId
);
id_type!(
    /// An order receipt: `R-` and its position in receipt order, at least six
    /// digits (`R-000123`), so that ids sort and read well.
    ReceiptId
);

id_type!(
    /// A delivery: the first of a planned receipt is numbered like it
    /// (`D-000123` delivers `R-000123`); a follow-up, which carries what a short
    /// delivery left, adds its round (`D-000123-2`, then `D-000123-3`).
    DeliveryId
);
id_type!(
    /// One goods issue of a delivery: `D-000123-L1` is its first leg.
    LegId
);

/// Where the round goes in a delivery's [`number`](DeliveryId::number): first
/// deliveries keep their receipt's number, and follow-ups number after every
/// first delivery, up to 2^40 receipts.
const ROUND_SHIFT: u32 = 40;

/// The last round a delivery number holds: the key stays below 2^63 (a
/// PostgreSQL bigint).
const MAX_ROUND: u32 = 1 << (63 - ROUND_SHIFT);

impl DeliveryId {
    /// The delivery of the `seq`-th receipt.
    pub fn from_seq(seq: u64) -> Self {
        Self(format!("D-{seq:06}"))
    }

    /// The receipt number and the round (1 for the first delivery), when well formed.
    pub fn parts(&self) -> Option<(u64, u32)> {
        let rest = self.0.strip_prefix("D-")?;
        let (digits, round) = match rest.split_once('-') {
            // A round's number must fit the storage key beside the receipt's.
            Some((digits, round)) => {
                (digits, round.parse::<u32>().ok().filter(|round| (2..=MAX_ROUND).contains(round))?)
            }
            None => (rest, 1),
        };
        let seq: u64 = digits.parse().ok().filter(|seq| *seq < 1 << ROUND_SHIFT)?;
        // One spelling per delivery: D-000007-2, never D-7-2 nor D-000007-02.
        (Self::of_round(seq, round) == *self).then_some((seq, round))
    }

    /// The receipt number this delivery belongs to, when well formed.
    pub fn receipt_seq(&self) -> Option<u64> {
        self.parts().map(|(seq, _)| seq)
    }

    /// Its key in storage: a first delivery's is its receipt's number, a
    /// follow-up's sorts after every first delivery.
    pub fn number(&self) -> Option<u64> {
        self.parts().map(|(seq, round)| seq | (u64::from(round - 1) << ROUND_SHIFT))
    }

    /// The `round`-th delivery of the `seq`-th receipt (1 is its first).
    pub fn of_round(seq: u64, round: u32) -> Self {
        if round <= 1 {
            Self::from_seq(seq)
        } else {
            Self(format!("D-{seq:06}-{round}"))
        }
    }

    /// The id of this delivery's leg at `index` (0-based).
    pub fn leg(&self, index: usize) -> LegId {
        LegId(format!("{}-L{}", self.0, index + 1))
    }
}

impl LegId {
    /// The delivery and the 0-based position of this leg, when well formed.
    pub fn split(&self) -> Option<(DeliveryId, usize)> {
        let (delivery, number) = self.0.rsplit_once("-L")?;
        let delivery = DeliveryId::parse(delivery).ok().filter(|d| d.parts().is_some())?;
        let number: usize = number.parse().ok().filter(|n| *n >= 1)?;
        (delivery.leg(number - 1) == *self).then_some((delivery, number - 1))
    }
}

impl ReceiptId {
    /// The receipt id of the `seq`-th receipt.
    pub fn from_seq(seq: u64) -> Self {
        Self(format!("R-{seq:06}"))
    }

    /// The position in receipt order, when this is a well-formed receipt id.
    pub fn seq(&self) -> Option<u64> {
        let digits = self.0.strip_prefix("R-")?;
        if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let seq: u64 = digits.parse().ok()?;
        // One spelling per receipt: R-000123, never R-0000123.
        (Self::from_seq(seq) == *self).then_some(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_id_is_accepted() {
        assert_eq!(NodeId::parse("B-1.north_2").map(|id| id.to_string()), Ok("B-1.north_2".into()));
    }

    #[test]
    fn empty_long_and_odd_ids_are_refused() {
        assert_eq!(ItemId::parse(""), Err(IdError::Empty));
        assert_eq!(ItemId::parse("x".repeat(MAX_ID_LEN + 1)), Err(IdError::TooLong));
        assert_eq!(ItemId::parse("a b"), Err(IdError::BadCharacter));
        assert_eq!(ItemId::parse("<script>"), Err(IdError::BadCharacter));
        assert_eq!(ItemId::parse("é"), Err(IdError::BadCharacter));
    }

    #[test]
    fn receipt_ids_are_readable_and_map_to_their_position() {
        assert_eq!(ReceiptId::from_seq(123).as_str(), "R-000123");
        assert_eq!(ReceiptId::from_seq(1_234_567).as_str(), "R-1234567");
        assert_eq!(ReceiptId::from_seq(42).seq(), Some(42));
        for odd in ["R-42", "R-0000042", "X-000042", "R-00004a"] {
            assert_eq!(ReceiptId::parse(odd).ok().and_then(|id| id.seq()), None, "{odd}");
        }
    }

    #[test]
    fn delivery_and_leg_ids_name_their_parts() {
        let delivery = DeliveryId::from_seq(7);
        assert_eq!(delivery.as_str(), "D-000007");
        assert_eq!(delivery.number(), Some(7));
        let leg = delivery.leg(2);
        assert_eq!(leg.as_str(), "D-000007-L3");
        assert_eq!(leg.split(), Some((delivery.clone(), 2)));
        assert_eq!(DeliveryId::of_round(7, 1), delivery);
        let follow_up = DeliveryId::of_round(7, 2);
        assert_eq!(follow_up.as_str(), "D-000007-2");
        assert_eq!(follow_up.parts(), Some((7, 2)));
        assert_eq!(follow_up.receipt_seq(), Some(7));
        assert_eq!(follow_up.number(), Some(7 + (1 << 40)), "after every first delivery");
        assert_eq!(follow_up.leg(0).split(), Some((follow_up, 0)));
        for odd in
            ["D-000007-1", "D-000007-02", "D-7-2", "D-000007-", "D-000007-2-3", "D-000007-16777217", "D-000007-8388609"]
        {
            assert_eq!(DeliveryId::parse(odd).ok().and_then(|id| id.parts()), None, "{odd}");
        }
        for odd in ["D-000007-L0", "D-000007-L03", "D-7-L1", "X-000007-L1", "D-000007"] {
            assert_eq!(LegId::parse(odd).ok().and_then(|leg| leg.split()), None, "{odd}");
        }
    }

    #[test]
    fn deserialisation_validates() {
        let ok: Result<CustomerId, _> = serde_json::from_str("\"C1\"");
        assert!(ok.is_ok());
        let bad: Result<CustomerId, _> = serde_json::from_str("\"C 1\"");
        assert!(bad.is_err());
    }
}
