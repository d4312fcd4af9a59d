//! Acquiring a subnet: resume the last known lease, adopt this node's own key, or
//! create a preferred or a new one, retrying lost races.

use super::*;

impl LeaseMachine {
    pub(super) fn start_acquiring(&mut self, out: &mut Vec<Action>) {
        self.lost_races.clear();
        self.lists = 0;
        let netconf = self.netconf.as_ref().expect("acquiring needs the config");
        match self.config.resume {
            Some((subnet, lease_id)) if lease_id != 0 && is_compatible(netconf, subnet) => {
                self.phase = Phase::Acquire(Acquiring::ResumeRead { subnet, lease_id });
                out.push(Action::GetLease(subnet));
            }
            _ => self.list(out),
        }
    }

    fn list(&mut self, out: &mut Vec<Action>) {
        if self.lists >= MAX_ACQUIRE_ATTEMPTS {
            let network = self.netconf.as_ref().map(|n| n.network).unwrap_or_default();
            return self.fail(
                ManagerError::TooManyRaces {
                    network,
                    attempts: MAX_ACQUIRE_ATTEMPTS,
                },
                out,
            );
        }
        self.lists += 1;
        self.phase = Phase::Acquire(Acquiring::Listing);
        out.push(Action::ListLeases);
    }

    pub(super) fn on_acquire(
        &mut self,
        acquiring: Acquiring,
        observation: Observation,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        match (acquiring, observation) {
            (_, Observation::StoreUnreachable(error)) => {
                tracing::warn!(%error, "cannot acquire a subnet lease yet; retrying");
                self.report(LeaseState::WaitingForEtcd { error }, out);
                self.phase = Phase::Acquire(Acquiring::BackingOff);
                out.push(Action::WakeAt(now.mono + self.backoff.next_delay()));
            }
            (Acquiring::BackingOff, Observation::TimerFired) => self.start_acquiring(out),
            // The last known lease, if the store still has it exactly so: the key
            // holds this node's record, on the same handle, which is alive. Then
            // nothing is written (the handle stays, peers see no change).
            (Acquiring::ResumeRead { subnet, lease_id }, Observation::LeaseRead(current)) => {
                match current {
                    Some(current)
                        if current.lease_id == lease_id
                            && current.attrs == self.record(Some(&current.attrs)) =>
                    {
                        self.phase = Phase::Acquire(Acquiring::ResumeTimeLeft { subnet, lease_id });
                        out.push(Action::CheckTimeLeft(lease_id));
                    }
                    _ => self.list(out),
                }
            }
            (Acquiring::ResumeTimeLeft { subnet, lease_id }, Observation::TimeLeft(left)) => {
                match left {
                    Some(_) => self.acquired(subnet, lease_id, AcquiredHow::Resumed, now, out),
                    None => self.list(out),
                }
            }
            (Acquiring::Listing, Observation::Listed(stored)) => self.on_listed(stored, now, out),
            (Acquiring::DeletingMisfit, Observation::Deleted(_)) => self.list(out),
            (Acquiring::Adopting(own), Observation::Replaced(Some(lease_id))) => {
                if own.is_reservation() {
                    self.acquired(own.subnet, 0, AcquiredHow::Reservation, now, out);
                } else {
                    // The key now hangs on the new handle; the old one (our previous
                    // run's) holds nothing and would otherwise linger until its TTL.
                    if own.lease_id != lease_id {
                        out.push(Action::Release(own.lease_id));
                    }
                    self.acquired(own.subnet, lease_id, AcquiredHow::Existing, now, out);
                }
            }
            // It changed under us: look again.
            (Acquiring::Adopting(_), Observation::Replaced(None)) => self.list(out),
            (Acquiring::Creating { subnet, preferred }, Observation::Claimed(claim)) => match claim
            {
                Claim::Won { lease_id } => {
                    let how = if preferred {
                        AcquiredHow::Preferred
                    } else {
                        AcquiredHow::New
                    };
                    self.acquired(subnet, lease_id, how, now, out);
                }
                Claim::Lost { holder } => {
                    out.push(Action::Count(Counter::RaceRetry));
                    tracing::info!(
                        %subnet,
                        holder = ?holder.map(|h| h.attrs.public_ip),
                        "lost the race for a subnet; retrying with another"
                    );
                    self.lost_races.insert(subnet);
                    self.list(out);
                }
            },
            (acquiring, _) => self.phase = Phase::Acquire(acquiring),
        }
    }

    fn on_listed(&mut self, stored: Vec<StoredLease>, now: Now, out: &mut Vec<Action>) {
        let netconf = self.netconf.clone().expect("acquiring needs the config");
        // (a) this node's own lease or reservation (same PublicIP), reservations first.
        let mut mine: Vec<&StoredLease> = stored
            .iter()
            .filter(|s| s.attrs.public_ip == self.config.public_ip)
            .collect();
        mine.sort_by_key(|s| !s.is_reservation());
        if let Some(own) = mine.first() {
            let own = (*own).clone();
            if !is_compatible(&netconf, own.subnet) {
                tracing::warn!(
                    subnet = %own.subnet, network = %netconf.network,
                    "found this node's lease but it does not fit the network config; deleting it"
                );
                self.phase = Phase::Acquire(Acquiring::DeletingMisfit);
                out.push(Action::Delete {
                    subnet: own.subnet,
                    expected_revision: own.mod_revision,
                });
                return;
            }
            let attrs = self.record(Some(&own.attrs));
            if own.is_reservation() && own.attrs == attrs {
                return self.acquired(own.subnet, 0, AcquiredHow::Reservation, now, out);
            }
            // A reservation keeps its TTL-less form (its attributes refreshed so peers
            // reach the current identity); a lease moves to a fresh handle.
            let binding = if own.is_reservation() {
                Binding::Reservation
            } else {
                Binding::Fresh(self.config.lease_ttl)
            };
            out.push(Action::Replace {
                subnet: own.subnet,
                attrs,
                binding,
                expected_revision: own.mod_revision,
            });
            self.phase = Phase::Acquire(Acquiring::Adopting(own));
            return;
        }

        // (b) a preferred subnet, else (c) a random free one.
        let taken: BTreeSet<Ipv4Net> = stored
            .iter()
            .map(|s| s.subnet)
            .chain(self.lost_races.iter().copied())
            .collect();
        let preferred = self
            .config
            .preferred
            .iter()
            .copied()
            .find(|p| is_compatible(&netconf, *p) && !taken.contains(p));
        let Some(subnet) = choose_subnet(&netconf, &taken, preferred, &mut self.rng) else {
            return self.fail(
                ManagerError::Exhausted {
                    network: netconf.network,
                    capacity: capacity(&netconf),
                    min: netconf.subnet_min,
                    max: netconf.subnet_max,
                    taken: stored.len(),
                    prefix: self.names.leases.clone(),
                },
                out,
            );
        };
        self.phase = Phase::Acquire(Acquiring::Creating {
            subnet,
            preferred: Some(subnet) == preferred,
        });
        out.push(Action::Create {
            subnet,
            attrs: self.record(None),
            ttl: Some(self.config.lease_ttl),
        });
    }

    fn acquired(
        &mut self,
        subnet: Ipv4Net,
        lease_id: LeaseId,
        how: AcquiredHow,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let held = HeldLease {
            netconf: self.netconf.clone().expect("acquiring needs the config"),
            subnet,
            lease_id,
            how,
        };
        let expires_unix =
            (lease_id != 0).then(|| expiry_unix(now, ttl_secs(self.config.lease_ttl)));
        self.report(
            LeaseState::Held {
                subnet,
                public_ip: self.config.public_ip,
                reservation: lease_id == 0,
                lease_id,
                expires_unix,
            },
            out,
        );
        tracing::info!(
            %subnet,
            public_ip = %self.config.public_ip,
            ?how,
            lease_id,
            race_retries = self.lost_races.len(),
            "subnet lease acquired"
        );
        self.held = Some(held.clone());
        self.backoff.reset();
        out.push(Action::Acquired(held));
        self.wait_to_renew(now, out);
    }
}
