//! What happens when one engine step fails: only the requests of that step end (each with the
//! error), their blocks are freed, and the engine keeps serving the rest. A panic inside the
//! model run is caught here and treated the same way. A test hook makes steps fail on demand.

use std::panic::{catch_unwind, AssertUnwindSafe};

pub use ember_core::panic_message;
use ember_core::{BackendError, FinishReason, ModelRunnerOutput, RequestId, SchedulerOutput};

use super::{EngineError, LlmEngine};

/// A failure a test can make the next steps raise (see [`LlmEngine::inject_step_faults`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepFault {
    /// The model run returns a device error.
    Error,
    /// The model run panics.
    Panic,
}

impl StepFault {
    /// Parses "error" or "panic".
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "error" => Some(Self::Error),
            "panic" => Some(Self::Panic),
            _ => None,
        }
    }
}

/// The injected faults still to fire: `num_steps` steps that run something raise `fault`.
#[derive(Debug, Default)]
pub(super) struct FaultPlan {
    fault: Option<StepFault>,
    num_steps: usize,
}

impl LlmEngine {
    /// Test hook: the next `num_steps` steps that run any request fail with `fault`, as a
    /// device error or a panic in the model would.
    pub fn inject_step_faults(&mut self, fault: StepFault, num_steps: usize) {
        self.faults = FaultPlan {
            fault: Some(fault),
            num_steps,
        };
    }

    /// Runs the model on `scheduled`; a panic becomes a device error instead of unwinding
    /// through the engine.
    pub(super) fn execute_guarded(
        &mut self,
        scheduled: &SchedulerOutput,
    ) -> Result<ModelRunnerOutput, BackendError> {
        let fault = self.next_fault(scheduled);
        guarded(|| {
            match fault {
                Some(StepFault::Error) => return Err(BackendError::Device("injected step fault".into())),
                Some(StepFault::Panic) => panic!("injected step panic"),
                None => {}
            }
            self.executor.execute(scheduled)
        })
    }

    /// Has the draft model fill in `scheduled`'s drafts, as [`Self::execute_guarded`] runs.
    pub(super) fn propose_guarded(&mut self, scheduled: &mut SchedulerOutput) -> Result<(), BackendError> {
        guarded(|| self.executor.propose_drafts(scheduled))
    }
}

/// Runs `work`; a panic becomes a device error instead of unwinding through the engine.
fn guarded<T>(work: impl FnOnce() -> Result<T, BackendError>) -> Result<T, BackendError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        Err(BackendError::Device(format!(
            "internal error (panic) in the model run: {}",
            panic_message(payload.as_ref())
        )))
    })
}

impl LlmEngine {
    /// Ends every request of a failed step (freeing its blocks) and returns the error that
    /// names them; requests outside the step are untouched.
    pub(super) fn fail_step(&mut self, scheduled: &SchedulerOutput, source: BackendError) -> EngineError {
        let mut request_ids: Vec<RequestId> = Vec::new();
        for seq in &scheduled.seqs {
            if self
                .scheduler
                .finish_request(&seq.request_id, FinishReason::Abort)
                .is_some()
            {
                self.forget_request(&seq.request_id);
                request_ids.push(seq.request_id.clone());
            }
        }
        log::error!("engine step failed for {} requests: {source}", request_ids.len());
        EngineError::StepFailed {
            request_ids: request_ids.iter().map(|id| id.to_string()).collect(),
            source,
        }
    }

    fn next_fault(&mut self, scheduled: &SchedulerOutput) -> Option<StepFault> {
        if scheduled.seqs.is_empty() || self.faults.num_steps == 0 {
            return None;
        }
        self.faults.num_steps -= 1;
        self.faults.fault
    }
}
