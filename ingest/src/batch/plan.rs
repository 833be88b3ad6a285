//! Planning a batch into groups that must each run in offset order, and may run
//! concurrently with each other (see the parent module).

use std::collections::{HashMap, HashSet};

use crate::persons::NewPerson;
use crate::process::{Deps, Prepared};
use crate::stores::Stores;

/// What the plan knows of an event before processing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub team: i64,
    pub distinct_id: String,
    /// The id a merge event merges into `distinct_id`.
    pub merge_source: Option<String>,
}

/// Groups of message indices, each in ascending (offset) order, ordered by their first
/// message. `None` members (unparseable, unknown team) touch no person and stand alone.
pub(crate) fn plan(members: &[Option<Member>], person_of: impl Fn(i64, &str) -> Option<i64>) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..members.len()).collect();
    let mut first_of_id: HashMap<(i64, &str), usize> = HashMap::new();
    let mut first_of_person: HashMap<(i64, i64), usize> = HashMap::new();
    for (i, m) in members.iter().enumerate() {
        let Some(m) = m else { continue };
        for id in std::iter::once(m.distinct_id.as_str()).chain(m.merge_source.as_deref()) {
            let first = *first_of_id.entry((m.team, id)).or_insert(i);
            union(&mut parent, i, first);
            if let Some(person) = person_of(m.team, id) {
                let first = *first_of_person.entry((m.team, person)).or_insert(i);
                union(&mut parent, i, first);
            }
        }
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of_root: HashMap<usize, usize> = HashMap::new();
    for i in 0..members.len() {
        let root = find(&mut parent, i);
        let g = *group_of_root.entry(root).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (a, b) = (find(parent, a), find(parent, b));
    // The smaller index as root keeps each group's root its first message.
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    parent[high] = low;
}

/// Reads the persons of the batch's distinct ids (one query per team), creates in one
/// statement the persons its events will create first (see [`new_persons`]), and plans
/// the groups.
pub(super) async fn plan_batch<S: Stores>(
    prepared: &[Prepared],
    deps: &Deps<'_, S>,
) -> Result<Vec<Vec<usize>>, sqlx::Error> {
    let mut members = Vec::with_capacity(prepared.len());
    let mut ids: HashMap<i64, Vec<String>> = HashMap::new();
    for p in prepared {
        let member = match p {
            Prepared::Ready(ready) => Some(Member {
                team: ready.team_id(),
                distinct_id: ready.distinct_id().to_string(),
                merge_source: ready.person_event().and_then(|e| e.merge_source().map(str::to_string)),
            }),
            Prepared::Done(_) => None,
        };
        if let Some(m) = &member {
            let list = ids.entry(m.team).or_default();
            list.push(m.distinct_id.clone());
            list.extend(m.merge_source.clone());
        }
        members.push(member);
    }
    for list in ids.values_mut() {
        list.sort_unstable();
        list.dedup();
    }
    let person_of = deps.stores.prefetch_persons(&ids).await?;
    let person_of = |team: i64, id: &str| person_of.get(&(team, id.to_string())).copied();
    deps.stores.create_persons(new_persons(prepared, person_of)).await?;
    Ok(plan(&members, person_of))
}

/// The persons the batch's events create one at a time when run in order, known before
/// any runs: an event that is the first of the batch to touch a distinct id with no
/// person, and is not a merge, creates it from its own `$set`/`$set_once` and time,
/// whatever else the batch holds. Created ahead in one statement, they cost one round
/// trip per batch instead of one per person; each stays attributed to its event.
pub(crate) fn new_persons(prepared: &[Prepared], person_of: impl Fn(i64, &str) -> Option<i64>) -> Vec<NewPerson> {
    let mut touched: HashSet<(i64, &str)> = HashSet::new();
    let mut new = Vec::new();
    for p in prepared {
        let Prepared::Ready(ready) = p else { continue };
        let Some(ev) = ready.person_event() else { continue };
        let source = ev.merge_source();
        let first = touched.insert((ev.team_id, ev.distinct_id));
        if source.is_none() && first && person_of(ev.team_id, ev.distinct_id).is_none() {
            new.push(NewPerson::of(&ev));
        }
        if let Some(source) = source {
            touched.insert((ev.team_id, source));
        }
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(distinct_id: &str) -> Option<Member> {
        Some(Member { team: 1, distinct_id: distinct_id.into(), merge_source: None })
    }

    fn merge(distinct_id: &str, source: &str) -> Option<Member> {
        Some(Member { team: 1, distinct_id: distinct_id.into(), merge_source: Some(source.into()) })
    }

    #[test]
    fn one_group_per_distinct_id_in_offset_order() {
        let members = [m("a"), m("b"), m("a"), None, m("c"), m("b")];
        assert_eq!(plan(&members, |_, _| None), vec![vec![0, 2], vec![1, 5], vec![3], vec![4]]);
    }

    #[test]
    fn the_same_id_in_another_team_is_another_group() {
        let other = Some(Member { team: 2, distinct_id: "a".into(), merge_source: None });
        assert_eq!(plan(&[m("a"), other], |_, _| None), vec![vec![0], vec![1]]);
    }

    #[test]
    fn ids_merged_in_the_batch_share_a_group() {
        // anon's events before and after the identify must stay in order with user's.
        let members = [m("anon"), m("user"), merge("user", "anon"), m("anon"), m("other")];
        assert_eq!(plan(&members, |_, _| None), vec![vec![0, 1, 2, 3], vec![4]]);
    }

    #[test]
    fn ids_already_on_one_person_share_a_group() {
        let person = |_: i64, id: &str| match id {
            "anon" | "user" => Some(7),
            "other" => Some(8),
            _ => None,
        };
        let members = [m("anon"), m("other"), m("user"), m("new")];
        assert_eq!(plan(&members, person), vec![vec![0, 2], vec![1], vec![3]]);
    }

    #[test]
    fn chains_of_merges_join_transitively() {
        let members = [merge("b", "a"), m("x"), merge("c", "b"), m("a"), m("c")];
        assert_eq!(plan(&members, |_, _| None), vec![vec![0, 2, 3, 4], vec![1]]);
    }
}
