//! Unit tests of the gateway: the hold and resend logic under a paused clock, callers, answers.
