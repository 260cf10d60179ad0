//! Typed identifiers. Like Swarm's, they are 25 lowercase base-36 characters;
//! they are shown truncated to 12 in tables.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

const ID_LEN: usize = 25;
const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

fn random_id() -> String {
    let mut rng = rand::thread_rng();
    (0..ID_LEN).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

macro_rules! typed_id {
    ($name:ident) => {
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn random() -> Self {
                Self(random_id())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The 12-character prefix shown in tables.
            pub fn short(&self) -> &str {
                let end = self.0.len().min(12);
                &self.0[..end]
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

typed_id!(NodeId);
typed_id!(ServiceId);
typed_id!(TaskId);
typed_id!(SecretId);
typed_id!(ConfigId);
typed_id!(NetworkId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_25_base36_chars_and_distinct() {
        let a = TaskId::random();
        let b = TaskId::random();
        assert_eq!(a.as_str().len(), 25);
        assert!(a.as_str().bytes().all(|c| ALPHABET.contains(&c)));
        assert_ne!(a, b);
        assert_eq!(a.short().len(), 12);
    }
}
