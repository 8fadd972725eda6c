//! The closed vocabularies of the domain: account roles and node kinds. Their
//! wire names are the snake_case names of the SPEC.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A name that is not one of a vocabulary's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {vocabulary} {name:?}; expected one of: {expected}")]
pub struct UnknownName {
    pub vocabulary: &'static str,
    pub name: String,
    pub expected: String,
}

macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident, $label:literal, { $($(#[$vdoc:meta])* $variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire),+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(raw: &str) -> Result<Self, UnknownName> {
                match raw {
                    $($wire => Ok($name::$variant),)+
                    _ => Err(UnknownName {
                        vocabulary: $label,
                        name: raw.to_owned(),
                        expected: [$($wire),+].join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary!(
    /// Every account has exactly one role.
    Role, "role", {
        /// Loads the network, manages devices.
        Admin => "admin",
        /// Runs shipments, assigns deliveries, watches the dashboard.
        Dispatcher => "dispatcher",
        /// Orders for its own customer.
        Customer => "customer",
        /// A sales representative: assigns deliveries entrusted to its node.
        Seller => "seller",
        /// A distributor's courier, serving one branch warehouse.
        Expediter => "expediter",
        /// A seller's courier.
        Serviceman => "serviceman",
    }
);

vocabulary!(
    /// The kinds of node in the supply chain.
    NodeKind, "node kind", {
        Manufacturer => "manufacturer",
        MasterWarehouse => "master_warehouse",
        BranchWarehouse => "branch_warehouse",
        Seller => "seller",
    }
);

impl Role {
    /// The role with its indefinite article, for messages: "an expediter".
    pub fn with_article(self) -> String {
        let article = if matches!(self, Role::Admin | Role::Expediter) { "an" } else { "a" };
        format!("{article} {self}")
    }

    /// Couriers carry handhelds and deliver.
    pub fn is_courier(self) -> bool {
        matches!(self, Role::Expediter | Role::Serviceman)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(*role));
            assert_eq!(serde_json::to_string(role).ok(), Some(format!("\"{role}\"")));
        }
        for kind in NodeKind::ALL {
            assert_eq!(kind.as_str().parse::<NodeKind>(), Ok(*kind));
        }
    }

    #[test]
    fn an_unknown_name_lists_the_expected_ones() {
        let err = "courier".parse::<Role>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "unknown role \"courier\"; expected one of: admin, dispatcher, customer, seller, expediter, serviceman"
            )
        );
    }
}
