//! `[aliases.NAME]` to route specs: each target's provider must exist, its
//! model be named and its weight be at least 1, and priorities and weights
//! must mean what they say.

use super::ConfigProblem;
use super::file::{AliasFile, TargetFile};
use super::providers::AbsentProviders;
use crate::config::Provider;
use crate::proxy::route::{AliasSpec, AliasTarget};
use std::sync::Arc;

pub fn alias_specs(
    aliases: Vec<(String, AliasFile)>,
    providers: &[Arc<Provider>],
    absent: &AbsentProviders,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<AliasSpec> {
    let mut specs = Vec::new();
    for (name, alias) in aliases {
        let path = format!("aliases.{name}");
        if name.trim().is_empty() {
            problems.push(ConfigProblem::new(&path, "alias name is empty"));
        } else if let Some(problem) = super::model_id::problem(&name) {
            problems.push(ConfigProblem::new(&path, format!("alias name {problem}")));
        }
        if alias.targets.is_empty() {
            problems.push(ConfigProblem::new(
                format!("{path}.targets"),
                "needs at least one target",
            ));
        }
        check_priorities(&path, &alias.targets, problems);
        let mut targets = Vec::new();
        for (i, target) in alias.targets.into_iter().enumerate() {
            let tpath = format!("{path}.targets[{i}]");
            // Each member is checked on its own, so every problem of a
            // target is reported at once.
            let before = problems.len();
            let provider = providers.iter().find(|p| *p.name == *target.provider);
            if provider.is_none()
                && let Some(problem) = absent.problem(&target.provider)
            {
                problems.push(ConfigProblem::new(format!("{tpath}.provider"), problem));
            }
            if let Some(problem) = super::model_id::problem(&target.model) {
                problems.push(ConfigProblem::new(format!("{tpath}.model"), problem));
            }
            if target.weight == Some(0) {
                problems.push(ConfigProblem::new(
                    format!("{tpath}.weight"),
                    "must be at least 1 (leave the target out to stop using it)",
                ));
            }
            if let Some(provider) = provider
                && problems.len() == before
            {
                targets.push(AliasTarget {
                    provider: provider.clone(),
                    model: target.model,
                    priority: target.priority,
                    weight: target.weight,
                });
            }
        }
        specs.push(AliasSpec { name, targets });
    }
    specs
}

/// Weights share load only among targets of equal priority, and a target
/// without a priority takes its place in the list. So a given priority
/// equal to another target's place ties the two by accident, and a weight
/// (other than the default 1) on a target alone at its priority does
/// nothing (weights on targets without priorities: fail-over in list
/// order, not the split they ask for). Both are refused rather than
/// silently not doing what they say.
fn check_priorities(path: &str, targets: &[TargetFile], problems: &mut Vec<ConfigProblem>) {
    let priority = |i: usize, target: &TargetFile| target.priority.unwrap_or(i as u32);
    for (i, target) in targets.iter().enumerate() {
        let own = priority(i, target);
        let mut equal = targets
            .iter()
            .enumerate()
            .filter(|&(j, other)| j != i && priority(j, other) == own);
        if target.priority.is_some()
            && let Some((j, _)) = targets
                .iter()
                .enumerate()
                .find(|&(j, other)| j != i && other.priority.is_none() && j as u32 == own)
        {
            problems.push(ConfigProblem::new(
                format!("{path}.targets[{i}].priority"),
                format!(
                    "ties with targets[{j}], which has no priority and so takes its place in the \
                     list ({own}); give every target of the alias a priority, or none"
                ),
            ));
        }
        if matches!(target.weight, Some(w) if w > 1) && equal.next().is_none() {
            problems.push(ConfigProblem::new(
                format!("{path}.targets[{i}].weight"),
                format!(
                    "has no effect: weights share load among targets of equal priority, \
                     and no other target has priority {own} (give the targets that share \
                     load the same priority)"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(priority: Option<u32>, weight: Option<u32>) -> TargetFile {
        TargetFile {
            provider: "moonshot".into(),
            model: "kimi-k2.6".into(),
            priority,
            weight,
        }
    }

    fn problems_of(targets: &[TargetFile]) -> Vec<String> {
        let mut problems = Vec::new();
        check_priorities("aliases.a", targets, &mut problems);
        problems.into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn weights_without_equal_priorities_are_refused() {
        // Weights 3:1 in list order: fail-over, never the split.
        assert_eq!(
            problems_of(&[target(None, Some(3)), target(None, Some(1))]),
            ["aliases.a.targets[0].weight"]
        );
        assert_eq!(
            problems_of(&[target(Some(0), Some(3)), target(Some(1), Some(2))]),
            ["aliases.a.targets[0].weight", "aliases.a.targets[1].weight"]
        );
    }

    #[test]
    fn a_given_priority_tying_with_a_default_one_is_refused() {
        // The second target's default (its place, 1) ties with the first's 1.
        assert_eq!(
            problems_of(&[target(Some(1), None), target(None, None)]),
            ["aliases.a.targets[0].priority"]
        );
    }

    #[test]
    fn what_the_file_means_is_accepted() {
        assert!(problems_of(&[target(None, None), target(None, None)]).is_empty());
        assert!(
            problems_of(&[
                target(Some(0), Some(3)),
                target(Some(0), Some(1)),
                target(Some(1), Some(1)),
            ])
            .is_empty()
        );
        // A mix without a tie, and the default weight said out loud.
        assert!(problems_of(&[target(Some(0), None), target(None, Some(1))]).is_empty());
        // A weight of 0 is refused on its own.
        assert!(problems_of(&[target(None, Some(0))]).is_empty());
    }
}
