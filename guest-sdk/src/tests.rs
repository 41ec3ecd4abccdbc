//! The SDK's own checks: phases declared from the implemented methods, and per-request state.

use crate::mock::{self, MockHost};
use crate::{Phase, PhaseResult, Plugin, declared_phases, response};

/// Implements only `header_filter`, and counts its calls in a field.
struct Stamp {
    calls: u32,
}

#[crate::plugin]
impl Plugin for Stamp {
    fn configure(_config: &str) -> Result<Self, String> {
        Ok(Stamp { calls: 0 })
    }

    fn header_filter(&mut self) -> PhaseResult {
        self.calls += 1;
        response::set_header("x-stamp", &self.calls.to_string())?;
        Ok(())
    }
}

/// Implements several phases out of canonical order.
struct Several;

#[crate::plugin]
impl Plugin for Several {
    fn log(&mut self) -> PhaseResult {
        Ok(())
    }

    fn configure(_config: &str) -> Result<Self, String> {
        Ok(Several)
    }

    fn body_filter(&mut self, _chunk: &[u8], _end_of_stream: bool) -> PhaseResult {
        Ok(())
    }

    fn certificate(&mut self) -> PhaseResult {
        Ok(())
    }
}

#[test]
fn an_implemented_header_filter_is_declared_and_runs() {
    assert_eq!(declared_phases::<Stamp>(), [Phase::HeaderFilter]);

    mock::install(MockHost {
        phase: Phase::HeaderFilter,
        ..MockHost::default()
    });
    let mut plugin = Stamp::configure("{}").unwrap();
    plugin.header_filter().unwrap();
    plugin.header_filter().unwrap();
    assert_eq!(
        mock::with(|host| host.response_header("x-stamp")),
        Some("2".to_string()),
        "the second call sees the state the first one left"
    );
}

#[test]
fn declared_phases_are_in_canonical_order() {
    assert_eq!(
        declared_phases::<Several>(),
        [Phase::Certificate, Phase::BodyFilter, Phase::Log]
    );
}
