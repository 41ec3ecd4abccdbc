//! The phases and the phase table: which host function may be called in which phase.

use std::fmt;

/// A point in the life of a connection or a request at which plugins run.
///
/// The declaration order is the canonical order used in every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// After the ClientHello is read (SNI known), before the server answers it. Once per connection.
    Certificate,
    /// Request head received, before routing decisions are final.
    Rewrite,
    /// After routing: authentication and authorisation. May answer the request itself.
    Access,
    /// Choosing the upstream target; runs again for each retry.
    Balancer,
    /// Upstream response head received, before it is sent to the client.
    HeaderFilter,
    /// For each chunk of the response body; the last call is flagged end-of-stream.
    BodyFilter,
    /// After the response is sent.
    Log,
}

impl Phase {
    /// Every phase, in canonical order.
    pub const ALL: [Phase; 7] = [
        Phase::Certificate,
        Phase::Rewrite,
        Phase::Access,
        Phase::Balancer,
        Phase::HeaderFilter,
        Phase::BodyFilter,
        Phase::Log,
    ];

    /// The phase's name as messages, configs and logs spell it (`header_filter`).
    pub const fn name(self) -> &'static str {
        match self {
            Phase::Certificate => "certificate",
            Phase::Rewrite => "rewrite",
            Phase::Access => "access",
            Phase::Balancer => "balancer",
            Phase::HeaderFilter => "header_filter",
            Phase::BodyFilter => "body_filter",
            Phase::Log => "log",
        }
    }

    /// Parses a phase name as [`Phase::name`] spells it.
    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|phase| phase.name() == name)
    }

    /// Whether the phase belongs to a request rather than to the connection.
    pub const fn is_request_phase(self) -> bool {
        !matches!(self, Phase::Certificate)
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of phases, iterated in canonical order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PhaseSet(u8);

impl PhaseSet {
    /// No phase.
    pub const EMPTY: PhaseSet = PhaseSet(0);
    /// Every phase.
    pub const ALL: PhaseSet = PhaseSet::of(&Phase::ALL);
    /// The six request phases (everything but `certificate`).
    pub const REQUEST: PhaseSet = PhaseSet::of(&[
        Phase::Rewrite,
        Phase::Access,
        Phase::Balancer,
        Phase::HeaderFilter,
        Phase::BodyFilter,
        Phase::Log,
    ]);

    /// The set holding exactly `phases`.
    pub const fn of(phases: &[Phase]) -> PhaseSet {
        let mut bits = 0;
        let mut i = 0;
        while i < phases.len() {
            bits |= phases[i].bit();
            i += 1;
        }
        PhaseSet(bits)
    }

    /// Whether `phase` is in the set.
    pub const fn contains(self, phase: Phase) -> bool {
        self.0 & phase.bit() != 0
    }

    /// The set with `phase` added.
    pub const fn with(self, phase: Phase) -> PhaseSet {
        PhaseSet(self.0 | phase.bit())
    }

    /// Whether the two sets share a phase.
    pub const fn intersects(self, other: PhaseSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the set has no phase.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The phases in the set, in canonical order.
    pub fn iter(self) -> impl Iterator<Item = Phase> {
        Phase::ALL.into_iter().filter(move |p| self.contains(*p))
    }
}

impl FromIterator<Phase> for PhaseSet {
    fn from_iter<I: IntoIterator<Item = Phase>>(iter: I) -> Self {
        iter.into_iter().fold(PhaseSet::EMPTY, PhaseSet::with)
    }
}

impl fmt::Display for PhaseSet {
    /// Phase names in canonical order, joined by `", "`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, phase) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(phase.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for PhaseSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

/// Every function the host offers to plugins, named as in the WIT package (`interface.function`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostFunction {
    // client-tls: Kong's kong.client.tls
    /// `client-tls.request-client-certificate`
    RequestClientCertificate,
    /// `client-tls.disable-session-reuse`
    DisableSessionReuse,
    /// `client-tls.get-full-client-certificate-chain`
    GetFullClientCertificateChain,
    /// `client-tls.get-client-certificate`
    GetClientCertificate,
    /// `client-tls.get-escaped-client-certificate`
    GetEscapedClientCertificate,
    /// `client-tls.get-escaped-full-client-certificate-chain`
    GetEscapedFullClientCertificateChain,
    /// `client-tls.set-client-verify`
    SetClientVerify,
    /// `client-tls.verify-client-chain`
    VerifyClientChain,
    // connection
    /// `connection.sni`
    Sni,
    /// `connection.is-tls`
    IsTls,
    /// `connection.client-address`
    ClientAddress,
    /// `connection.tls-version`
    TlsVersion,
    /// `connection.cipher`
    Cipher,
    /// `connection.client-verify`
    ClientVerify,
    // request
    /// `request.method`
    RequestMethod,
    /// `request.path`
    RequestPath,
    /// `request.query`
    RequestQuery,
    /// `request.header`
    RequestHeader,
    /// `request.headers`
    RequestHeaders,
    /// `request.set-header`
    SetRequestHeader,
    /// `request.remove-header`
    RemoveRequestHeader,
    // response
    /// `response.exit`
    Exit,
    /// `response.status`
    ResponseStatus,
    /// `response.header`
    ResponseHeader,
    /// `response.headers`
    ResponseHeaders,
    /// `response.set-header`
    SetResponseHeader,
    /// `response.remove-header`
    RemoveResponseHeader,
    /// `response.set-body-chunk`
    SetBodyChunk,
    // balancer
    /// `balancer.targets`
    BalancerTargets,
    /// `balancer.set-target`
    SetTarget,
    /// `balancer.attempt`
    BalancerAttempt,
    // context
    /// `context.get`
    ContextGet,
    /// `context.set`
    ContextSet,
    // log
    /// `log.log`
    Log,
}

use Phase::*;

/// `rewrite, access`: where the request may still be changed or answered.
const BEFORE_UPSTREAM: PhaseSet = PhaseSet::of(&[Rewrite, Access]);
/// Phases in which the upstream's response head is known.
const RESPONSE: PhaseSet = PhaseSet::of(&[HeaderFilter, BodyFilter, Log]);

impl HostFunction {
    /// Every host function, in WIT order.
    pub const ALL: [HostFunction; 34] = [
        HostFunction::RequestClientCertificate,
        HostFunction::DisableSessionReuse,
        HostFunction::GetFullClientCertificateChain,
        HostFunction::GetClientCertificate,
        HostFunction::GetEscapedClientCertificate,
        HostFunction::GetEscapedFullClientCertificateChain,
        HostFunction::SetClientVerify,
        HostFunction::VerifyClientChain,
        HostFunction::Sni,
        HostFunction::IsTls,
        HostFunction::ClientAddress,
        HostFunction::TlsVersion,
        HostFunction::Cipher,
        HostFunction::ClientVerify,
        HostFunction::RequestMethod,
        HostFunction::RequestPath,
        HostFunction::RequestQuery,
        HostFunction::RequestHeader,
        HostFunction::RequestHeaders,
        HostFunction::SetRequestHeader,
        HostFunction::RemoveRequestHeader,
        HostFunction::Exit,
        HostFunction::ResponseStatus,
        HostFunction::ResponseHeader,
        HostFunction::ResponseHeaders,
        HostFunction::SetResponseHeader,
        HostFunction::RemoveResponseHeader,
        HostFunction::SetBodyChunk,
        HostFunction::BalancerTargets,
        HostFunction::SetTarget,
        HostFunction::BalancerAttempt,
        HostFunction::ContextGet,
        HostFunction::ContextSet,
        HostFunction::Log,
    ];

    /// The phase table: the phases in which this function may be called.
    ///
    /// This is the single source of truth. The client-TLS rows are Kong's documented table.
    pub const fn allowed_phases(self) -> PhaseSet {
        match self {
            HostFunction::RequestClientCertificate | HostFunction::DisableSessionReuse => {
                PhaseSet::of(&[Certificate])
            }
            // The leaf's facts and the escaped PEM are read from the chain: wherever the chain
            // is, and nowhere else.
            HostFunction::GetFullClientCertificateChain
            | HostFunction::GetClientCertificate
            | HostFunction::GetEscapedClientCertificate
            | HostFunction::GetEscapedFullClientCertificateChain
            | HostFunction::VerifyClientChain => PhaseSet::REQUEST,
            HostFunction::SetClientVerify => PhaseSet::of(&[Rewrite, Access, Balancer]),

            HostFunction::Sni | HostFunction::IsTls | HostFunction::ClientAddress => PhaseSet::ALL,
            // Negotiated only once the handshake is done, so not known in `certificate`.
            HostFunction::TlsVersion | HostFunction::Cipher | HostFunction::ClientVerify => {
                PhaseSet::REQUEST
            }

            HostFunction::RequestMethod
            | HostFunction::RequestPath
            | HostFunction::RequestQuery
            | HostFunction::RequestHeader
            | HostFunction::RequestHeaders => PhaseSet::REQUEST,
            HostFunction::SetRequestHeader | HostFunction::RemoveRequestHeader => BEFORE_UPSTREAM,

            HostFunction::Exit => BEFORE_UPSTREAM,
            HostFunction::ResponseStatus
            | HostFunction::ResponseHeader
            | HostFunction::ResponseHeaders => RESPONSE,
            HostFunction::SetResponseHeader | HostFunction::RemoveResponseHeader => {
                PhaseSet::of(&[HeaderFilter])
            }
            HostFunction::SetBodyChunk => PhaseSet::of(&[BodyFilter]),

            HostFunction::BalancerTargets
            | HostFunction::SetTarget
            | HostFunction::BalancerAttempt => PhaseSet::of(&[Balancer]),

            // In `certificate` the context belongs to the connection and seeds every request on it.
            HostFunction::ContextGet | HostFunction::ContextSet | HostFunction::Log => {
                PhaseSet::ALL
            }
        }
    }

    /// The function's WIT name, `interface.function`.
    pub const fn wit_name(self) -> &'static str {
        match self {
            HostFunction::RequestClientCertificate => "client-tls.request-client-certificate",
            HostFunction::DisableSessionReuse => "client-tls.disable-session-reuse",
            HostFunction::GetFullClientCertificateChain => {
                "client-tls.get-full-client-certificate-chain"
            }
            HostFunction::GetClientCertificate => "client-tls.get-client-certificate",
            HostFunction::GetEscapedClientCertificate => {
                "client-tls.get-escaped-client-certificate"
            }
            HostFunction::GetEscapedFullClientCertificateChain => {
                "client-tls.get-escaped-full-client-certificate-chain"
            }
            HostFunction::SetClientVerify => "client-tls.set-client-verify",
            HostFunction::VerifyClientChain => "client-tls.verify-client-chain",
            HostFunction::Sni => "connection.sni",
            HostFunction::IsTls => "connection.is-tls",
            HostFunction::ClientAddress => "connection.client-address",
            HostFunction::TlsVersion => "connection.tls-version",
            HostFunction::Cipher => "connection.cipher",
            HostFunction::ClientVerify => "connection.client-verify",
            HostFunction::RequestMethod => "request.method",
            HostFunction::RequestPath => "request.path",
            HostFunction::RequestQuery => "request.query",
            HostFunction::RequestHeader => "request.header",
            HostFunction::RequestHeaders => "request.headers",
            HostFunction::SetRequestHeader => "request.set-header",
            HostFunction::RemoveRequestHeader => "request.remove-header",
            HostFunction::Exit => "response.exit",
            HostFunction::ResponseStatus => "response.status",
            HostFunction::ResponseHeader => "response.header",
            HostFunction::ResponseHeaders => "response.headers",
            HostFunction::SetResponseHeader => "response.set-header",
            HostFunction::RemoveResponseHeader => "response.remove-header",
            HostFunction::SetBodyChunk => "response.set-body-chunk",
            HostFunction::BalancerTargets => "balancer.targets",
            HostFunction::SetTarget => "balancer.set-target",
            HostFunction::BalancerAttempt => "balancer.attempt",
            HostFunction::ContextGet => "context.get",
            HostFunction::ContextSet => "context.set",
            HostFunction::Log => "log.log",
        }
    }

    /// Checks the phase table: `Ok` when this function may run in `phase`.
    pub fn check(self, phase: Phase) -> Result<(), WrongPhase> {
        let allowed = self.allowed_phases();
        if allowed.contains(phase) {
            Ok(())
        } else {
            Err(WrongPhase { phase, allowed })
        }
    }
}

/// A host function was called in a phase the table does not allow.
///
/// Its `Display` is the exact message of the contract:
/// `function cannot be called in <phase> phase (only in: <allowed, canonical order>)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongPhase {
    /// The phase the call was made in.
    pub phase: Phase,
    /// The phases the function may be called in.
    pub allowed: PhaseSet,
}

impl fmt::Display for WrongPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "function cannot be called in {} phase (only in: {})",
            self.phase, self.allowed
        )
    }
}

impl std::error::Error for WrongPhase {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_phase_message_matches_the_contract() {
        let err = HostFunction::GetFullClientCertificateChain
            .check(Phase::Certificate)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "function cannot be called in certificate phase \
             (only in: rewrite, access, balancer, header_filter, body_filter, log)"
        );
        let err = HostFunction::SetClientVerify
            .check(Phase::BodyFilter)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "function cannot be called in body_filter phase (only in: rewrite, access, balancer)"
        );
    }

    #[test]
    fn client_tls_rows_are_kongs_table() {
        let expected: [(HostFunction, &[Phase]); 4] = [
            (HostFunction::RequestClientCertificate, &[Certificate]),
            (HostFunction::DisableSessionReuse, &[Certificate]),
            (
                HostFunction::GetFullClientCertificateChain,
                &[Rewrite, Access, Balancer, HeaderFilter, BodyFilter, Log],
            ),
            (HostFunction::SetClientVerify, &[Rewrite, Access, Balancer]),
        ];
        for (function, phases) in expected {
            assert_eq!(
                function.allowed_phases(),
                PhaseSet::of(phases),
                "{function:?}"
            );
        }
    }

    #[test]
    fn client_certificate_facts_are_allowed_exactly_where_the_chain_is() {
        for function in [
            HostFunction::GetClientCertificate,
            HostFunction::GetEscapedClientCertificate,
            HostFunction::GetEscapedFullClientCertificateChain,
        ] {
            assert_eq!(
                function.allowed_phases(),
                HostFunction::GetFullClientCertificateChain.allowed_phases(),
                "{function:?}"
            );
            let err = function.check(Phase::Certificate).unwrap_err();
            assert_eq!(
                err.to_string(),
                "function cannot be called in certificate phase \
                 (only in: rewrite, access, balancer, header_filter, body_filter, log)"
            );
        }
    }

    #[test]
    fn every_function_is_listed_once_with_a_unique_wit_name() {
        let mut names: Vec<_> = HostFunction::ALL.iter().map(|f| f.wit_name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), HostFunction::ALL.len());
        assert!(
            HostFunction::ALL
                .iter()
                .all(|f| !f.allowed_phases().is_empty())
        );
    }

    #[test]
    fn phase_names_round_trip() {
        for phase in Phase::ALL {
            assert_eq!(Phase::from_name(phase.name()), Some(phase));
        }
        assert_eq!(Phase::from_name("header-filter"), None);
    }
}
