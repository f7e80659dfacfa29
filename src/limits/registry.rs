//! Local limiter state that outlives a configuration: a reload builds new
//! scopes, and each takes over the state of the previous configuration's
//! scope with the same identity, so counters are not reset by a reload
//! that leaves them alone. Of a scope whose limits changed, each changed
//! limit starts afresh (its old count measured against another number) and
//! the others carry on.

use super::local::LocalState;
use super::spec::{LimitSpec, Scope, ScopeKind};
use std::collections::HashMap;
use std::sync::Arc;

type Identity = (Arc<str>, LimitSpec);

#[derive(Debug, Default)]
pub struct ScopeRegistry {
    by_identity: HashMap<Identity, Arc<LocalState>>,
    /// The previous configuration's states, by scope id, with the limits
    /// they counted.
    inherited: HashMap<Arc<str>, (LimitSpec, Arc<LocalState>)>,
}

impl ScopeRegistry {
    /// A registry that hands out `previous`'s state where it still fits.
    pub fn new(previous: Option<&ScopeRegistry>) -> Self {
        let inherited = previous.map_or_else(HashMap::new, |p| {
            p.by_identity
                .iter()
                .map(|((id, spec), state)| (id.clone(), (*spec, state.clone())))
                .collect()
        });
        ScopeRegistry {
            by_identity: HashMap::new(),
            inherited,
        }
    }

    /// The scope `kind`/`name`/`model` limited by `spec`, or `None` when
    /// `spec` limits nothing.
    pub fn scope(
        &mut self,
        kind: ScopeKind,
        name: &str,
        model: &str,
        spec: LimitSpec,
    ) -> Option<Arc<Scope>> {
        if spec.is_empty() {
            return None;
        }
        let (id, label) = Scope::id_and_label(kind, name, model);
        let identity: Identity = (id.into(), spec);
        let local = match self.by_identity.get(&identity) {
            Some(existing) => existing.clone(),
            None => {
                let state = match self.inherited.remove(&identity.0) {
                    Some((old_spec, old)) if old_spec == spec => old,
                    Some((_, old)) => Arc::new(LocalState::after(&spec, &old)),
                    None => Arc::new(LocalState::new(&spec)),
                };
                self.by_identity.insert(identity.clone(), state.clone());
                state
            }
        };
        Some(Arc::new(Scope {
            kind,
            id: identity.0,
            label: label.into(),
            spec,
            local,
        }))
    }

    /// Drops what was not taken over.
    pub fn drop_unclaimed(&mut self) {
        self.inherited.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn unchanged_scopes_keep_their_state_and_changed_ones_start_afresh() {
        let spec = LimitSpec {
            requests_per_minute: NonZeroU32::new(3),
            ..LimitSpec::default()
        };
        let mut first = ScopeRegistry::new(None);
        let a = first.scope(ScopeKind::Key, "a", "", spec).unwrap();
        let b = first.scope(ScopeKind::Key, "b", "", spec).unwrap();
        first.drop_unclaimed();
        let mut second = ScopeRegistry::new(Some(&first));
        let a2 = second.scope(ScopeKind::Key, "a", "", spec).unwrap();
        let changed = LimitSpec {
            requests_per_minute: NonZeroU32::new(4),
            ..spec
        };
        let b2 = second.scope(ScopeKind::Key, "b", "", changed).unwrap();
        assert!(Arc::ptr_eq(&a.local, &a2.local));
        assert!(!Arc::ptr_eq(&b.local, &b2.local));
        assert!(
            second
                .scope(ScopeKind::Global, "", "", LimitSpec::default())
                .is_none()
        );
    }
}
