//! What a request does (its [`Action`]) and what a key may do (its [`Scopes`]).

use std::fmt;
use std::str::FromStr;

/// The class of a request, decided by the route table from method, path and (for Zaif)
/// the `method` form field. Anything the table does not know is denied before this exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Market data: no key needed, forwarded without an identity assertion.
    Public,
    /// Reading account state (balances, orders, history).
    Read,
    /// Placing or cancelling orders.
    Trade,
    /// Moving funds out of the exchange.
    Withdraw,
}

impl Action {
    /// The lower-case name used in config files, audit events and assertions.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Public => "public",
            Action::Read => "read",
            Action::Trade => "trade",
            Action::Withdraw => "withdraw",
        }
    }

    /// The scope a key needs for this action; `None` for public endpoints.
    pub const fn required_scope(self) -> Option<Scope> {
        match self {
            Action::Public => None,
            Action::Read => Some(Scope::Read),
            Action::Trade => Some(Scope::Trade),
            Action::Withdraw => Some(Scope::Withdraw),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "public" => Ok(Action::Public),
            "read" => Ok(Action::Read),
            "trade" => Ok(Action::Trade),
            "withdraw" => Ok(Action::Withdraw),
            _ => Err(UnknownName),
        }
    }
}

/// A name that is not one of the known actions or scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown name")]
pub struct UnknownName;

/// One permission a key can hold. Scopes do not imply each other: a withdraw-only key
/// cannot read balances, which keeps narrowly-scoped keys narrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Scope {
    /// May read account state.
    Read = 1,
    /// May place and cancel orders.
    Trade = 2,
    /// May withdraw funds.
    Withdraw = 4,
}

impl Scope {
    /// All scopes in canonical order.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Trade, Scope::Withdraw];

    /// The lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Trade => "trade",
            Scope::Withdraw => "withdraw",
        }
    }
}

impl FromStr for Scope {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "trade" => Ok(Scope::Trade),
            "withdraw" => Ok(Scope::Withdraw),
            _ => Err(UnknownName),
        }
    }
}

/// A set of scopes, stored as bits so the hot path checks it with one AND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope at all.
    pub const NONE: Scopes = Scopes(0);

    /// Whether the set holds `scope`.
    pub const fn contains(self, scope: Scope) -> bool {
        self.0 & scope as u8 != 0
    }

    /// The set with `scope` added.
    pub const fn with(self, scope: Scope) -> Scopes {
        Scopes(self.0 | scope as u8)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes in canonical order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// The scope names, e.g. `["read", "trade"]`.
    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Scope::as_str).collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        iter.into_iter().fold(Scopes::NONE, Scopes::with)
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl FromStr for Scopes {
    type Err = UnknownName;
    /// Parses a comma-separated list such as `read,trade`; an empty string is no scope.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Scope::from_str)
            .collect()
    }
}
