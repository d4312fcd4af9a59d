//! Keeping the lease: renew it, check the key when in doubt, and take the same subnet
//! back when the lease is lost. The [`crate::lease::LocalLease`] never changes: the
//! data plane keeps running.

use super::*;

impl LeaseMachine {
    pub(super) fn wait_to_renew(&mut self, now: Now, out: &mut Vec<Action>) {
        self.phase = Phase::Held(Keeping::Idle);
        let mut wake = now.mono + self.config.renew_interval;
        if let Some(due) = self.renew_due.filter(|due| *due > now.mono) {
            wake = wake.min(due);
        }
        out.push(Action::WakeAt(wake));
    }

    fn held_lease(&self) -> &HeldLease {
        self.held.as_ref().expect("keeping needs a held lease")
    }

    /// Whether the last check found the lease lost or taken: then the key is read
    /// before every renewal.
    fn in_trouble(&self) -> bool {
        matches!(
            self.reported,
            LeaseState::Lost { .. } | LeaseState::Conflict { .. }
        )
    }

    /// One check: read our key first for a reservation, when asked, or while in
    /// trouble; else renew when the margin is reached (or the expiry is unknown), and
    /// otherwise read the time left.
    fn check(&mut self, verify_key: bool, now: Now, out: &mut Vec<Action>) {
        let held = self.held_lease();
        let (subnet, lease_id) = (held.subnet, held.lease_id);
        if lease_id == 0 || verify_key || self.in_trouble() {
            self.phase = Phase::Held(Keeping::Reading);
            out.push(Action::GetLease(subnet));
        } else if self.renewal_due(now) {
            self.renew(out);
        } else {
            self.phase = Phase::Held(Keeping::Probing);
            out.push(Action::CheckTimeLeft(lease_id));
        }
    }

    fn renewal_due(&self, now: Now) -> bool {
        self.renew_due.is_none_or(|due| now.mono >= due)
    }

    fn renew(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Held(Keeping::Renewing);
        out.push(Action::Renew(self.held_lease().lease_id));
    }

    /// The check is over: check again at once if our key changed meanwhile, else at
    /// the next renewal.
    fn checked(&mut self, now: Now, out: &mut Vec<Action>) {
        if std::mem::take(&mut self.verify_pending) {
            self.check(true, now, out);
        } else {
            self.wait_to_renew(now, out);
        }
    }

    /// Reports the lease held with `ttl_secs` left (`None` for a reservation), and
    /// when it is due for renewal.
    fn report_held(&mut self, ttl_secs: Option<i64>, now: Now, out: &mut Vec<Action>) {
        self.renew_due = ttl_secs.map(|ttl| {
            let left = Duration::from_secs(u64::try_from(ttl).unwrap_or(0));
            now.mono + left.saturating_sub(self.config.renew_margin)
        });
        let held = self.held_lease();
        let state = LeaseState::Held {
            subnet: held.subnet,
            public_ip: self.config.public_ip,
            reservation: held.lease_id == 0,
            lease_id: held.lease_id,
            expires_unix: ttl_secs.map(|ttl| expiry_unix(now, ttl)),
        };
        self.report(state, out);
    }

    pub(super) fn on_keep(
        &mut self,
        keeping: Keeping,
        observation: Observation,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let subnet = self.held_lease().subnet;
        match (keeping, observation) {
            (Keeping::Idle, Observation::TimerFired) => self.check(false, now, out),
            (Keeping::Idle, Observation::KeyChanged) => self.check(true, now, out),
            (keeping, Observation::KeyChanged) => {
                self.verify_pending = true;
                self.phase = Phase::Held(keeping);
            }
            (keeping, Observation::StoreUnreachable(error)) => {
                if keeping == Keeping::Recreating || matches!(keeping, Keeping::Retaking(_)) {
                    tracing::warn!(%subnet, %error, "lease lost and not re-acquired yet; retrying");
                } else {
                    tracing::warn!(%error, "cannot renew the subnet lease; retrying");
                }
                self.checked(now, out);
            }
            (Keeping::Reading, Observation::LeaseRead(current)) => match current {
                None => {
                    tracing::error!(%subnet, "this node's subnet key is gone (revoked, expired or deleted)");
                    self.lost(out);
                }
                Some(current) if current.attrs.public_ip != self.config.public_ip => {
                    self.conflict(current.attrs.public_ip, out);
                    self.checked(now, out);
                }
                Some(current) => {
                    if let Some(held) = self.held.as_mut() {
                        // Rewritten by our own earlier instance or an operator with our
                        // identity: keep the key alive through whatever handle it has.
                        held.lease_id = current.lease_id;
                    }
                    let attrs = self.record(Some(&current.attrs));
                    if current.attrs != attrs {
                        self.phase = Phase::Held(Keeping::Refreshing);
                        out.push(Action::Replace {
                            subnet,
                            attrs,
                            binding: Binding::Keep(current.lease_id),
                            expected_revision: current.mod_revision,
                        });
                    } else {
                        self.read_ok(now, out);
                    }
                }
            },
            (Keeping::Refreshing, Observation::Replaced(_)) => self.read_ok(now, out),
            (Keeping::Probing, Observation::TimeLeft(left)) => match left {
                Some(ttl) if ttl > 0 => {
                    self.report_held(Some(ttl), now, out);
                    if self.renewal_due(now) {
                        self.renew(out);
                    } else {
                        self.checked(now, out);
                    }
                }
                _ => {
                    tracing::error!(%subnet, lease_id = self.held_lease().lease_id,
                        "this node's lease expired or was revoked");
                    self.lost(out);
                }
            },
            (Keeping::Renewing, Observation::Renewed(ttl)) => match ttl {
                Some(ttl) if ttl > 0 => {
                    out.push(Action::Count(Counter::Renewal));
                    self.report_held(Some(ttl), now, out);
                    self.checked(now, out);
                }
                _ => {
                    tracing::error!(%subnet, lease_id = self.held_lease().lease_id,
                        "this node's lease expired or was revoked");
                    self.lost(out);
                }
            },
            (Keeping::Recreating, Observation::Claimed(claim)) => match claim {
                Claim::Won { lease_id } => self.reacquired(lease_id, now, out),
                Claim::Lost {
                    holder: Some(current),
                } if current.attrs.public_ip == self.config.public_ip => {
                    let attrs = self.record(Some(&current.attrs));
                    out.push(Action::Replace {
                        subnet,
                        attrs,
                        binding: Binding::Fresh(self.config.lease_ttl),
                        expected_revision: current.mod_revision,
                    });
                    self.phase = Phase::Held(Keeping::Retaking(current));
                }
                Claim::Lost { holder } => {
                    if let Some(holder) = holder {
                        self.conflict(holder.attrs.public_ip, out);
                    }
                    self.checked(now, out);
                }
            },
            (Keeping::Retaking(current), Observation::Replaced(Some(lease_id))) => {
                if current.lease_id != 0 && current.lease_id != lease_id {
                    out.push(Action::Release(current.lease_id));
                }
                self.reacquired(lease_id, now, out);
            }
            // Changed again: the next check looks anew.
            (Keeping::Retaking(_), Observation::Replaced(None)) => self.checked(now, out),
            (keeping, _) => self.phase = Phase::Held(keeping),
        }
    }

    /// Our key holds our record: a reservation is alive as it is, a lease is renewed.
    fn read_ok(&mut self, now: Now, out: &mut Vec<Action>) {
        if self.held_lease().lease_id == 0 {
            self.report_held(None, now, out);
            self.checked(now, out);
        } else {
            self.renew(out);
        }
    }

    /// The lease is gone: try to take the same subnet back right away.
    fn lost(&mut self, out: &mut Vec<Action>) {
        let subnet = self.held_lease().subnet;
        out.push(Action::Count(Counter::Loss));
        self.report(
            LeaseState::Lost {
                subnet,
                reason: "expired, revoked or deleted in the subnet store".into(),
            },
            out,
        );
        self.phase = Phase::Held(Keeping::Recreating);
        out.push(Action::Create {
            subnet,
            attrs: self.record(None),
            ttl: Some(self.config.lease_ttl),
        });
    }

    fn reacquired(&mut self, lease_id: LeaseId, now: Now, out: &mut Vec<Action>) {
        if let Some(held) = self.held.as_mut() {
            held.lease_id = lease_id;
        }
        out.push(Action::Count(Counter::Reacquisition));
        tracing::warn!(subnet = %self.held_lease().subnet, lease_id, "lease was lost; re-acquired the same subnet");
        self.report_held(Some(ttl_secs(self.config.lease_ttl)), now, out);
        self.checked(now, out);
    }

    /// Another node's record is at our key: nothing to renew or re-create while it
    /// holds it; keep checking, it may give the subnet up.
    fn conflict(&mut self, holder: Ipv4Addr, out: &mut Vec<Action>) {
        let subnet = self.held_lease().subnet;
        let state = LeaseState::Conflict { subnet, holder };
        if self.reported != state {
            tracing::error!(
                %subnet, %holder,
                "this node's subnet is now leased by another node; two nodes claim it and \
                 traffic to it is ambiguous — stop one of them or delete the wrong key"
            );
        }
        self.report(state, out);
    }
}
