//! Alarms (etcd's alarm store): which member raised which alarm, replicated through raft.
//!
//! An alarm is raised or cleared only by applying an `AlarmRequest` entry, in the applier's
//! batch transaction (table `alarm`), so every member holds the same set. While a NOSPACE
//! alarm is raised the applier refuses what would grow the store (puts, txns with puts, lease
//! grants), as etcd's capped applier does; reads and deletes go on, so an operator can compact,
//! defragment and disarm. While a CORRUPT alarm is raised it refuses writes, compactions and
//! lease grants/revokes (etcd's corrupt applier; see corrupt.rs).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use etcd_proto::etcdserverpb::{AlarmMember, AlarmType};
use parking_lot::RwLock;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::errors::ServerError;

/// (member ID, alarm type) -> nothing.
pub(crate) const ALARMS: TableDefinition<(u64, i32), ()> = TableDefinition::new("alarm");

fn storage_err(e: impl std::fmt::Display) -> ServerError {
    ServerError::Internal(format!("alarm store: {e}"))
}

#[derive(Default)]
pub struct Alarms {
    /// (alarm type, member ID), so listings come grouped by type, then member.
    raised: RwLock<BTreeSet<(i32, u64)>>,
    /// Whether a NOSPACE alarm is among them: the applier asks for every request.
    no_space: AtomicBool,
    /// Whether a CORRUPT alarm is among them (the applier refuses writes while it is).
    corrupt: AtomicBool,
}

fn member(alarm: i32, member_id: u64) -> AlarmMember {
    AlarmMember { member_id, alarm }
}

impl Alarms {
    /// Loads the alarms stored in the backend.
    pub fn load(db: &redb::Database) -> Result<Alarms, ServerError> {
        let a = Alarms::default();
        a.reload(db)?;
        Ok(a)
    }

    /// Replaces the view with the alarms stored in `db` (after a snapshot replaced it).
    pub fn reload(&self, db: &redb::Database) -> Result<(), ServerError> {
        let mut raised = BTreeSet::new();
        let rtx = db.begin_read().map_err(storage_err)?;
        match rtx.open_table(ALARMS) {
            Ok(t) => {
                for row in t.iter().map_err(storage_err)? {
                    let (member_id, alarm) = row.map_err(storage_err)?.0.value();
                    raised.insert((alarm, member_id));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(storage_err(e)),
        }
        self.set(raised);
        Ok(())
    }

    /// Raised alarms of one type, or of every type for `AlarmType::None`.
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        self.raised
            .read()
            .iter()
            .filter(|(a, _)| alarm == AlarmType::None as i32 || *a == alarm)
            .map(|(a, m)| member(*a, *m))
            .collect()
    }

    pub fn no_space(&self) -> bool {
        self.no_space.load(Ordering::Acquire)
    }

    pub fn corrupt(&self) -> bool {
        self.corrupt.load(Ordering::Acquire)
    }

    fn set(&self, raised: BTreeSet<(i32, u64)>) {
        let mut g = self.raised.write();
        *g = raised;
        self.refresh(&g);
    }

    fn refresh(&self, raised: &BTreeSet<(i32, u64)>) {
        self.no_space.store(raised.iter().any(|(a, _)| *a == AlarmType::Nospace as i32), Ordering::Release);
        self.corrupt.store(raised.iter().any(|(a, _)| *a == AlarmType::Corrupt as i32), Ordering::Release);
    }

    /// Raises an alarm (again: a no-op); returns the alarm, and whether its type was clear.
    pub fn activate(&self, wtx: &WriteTransaction, member_id: u64, alarm: i32) -> Result<(AlarmMember, bool), ServerError> {
        let first_of_type = self.get(alarm).is_empty();
        let inserted = {
            let mut g = self.raised.write();
            let inserted = g.insert((alarm, member_id));
            self.refresh(&g);
            inserted
        };
        if inserted {
            wtx.open_table(ALARMS).map_err(storage_err)?.insert((member_id, alarm), ()).map_err(storage_err)?;
        }
        Ok((member(alarm, member_id), first_of_type))
    }

    /// Clears an alarm; returns it if it was raised, and whether its type is now clear.
    pub fn deactivate(
        &self,
        wtx: &WriteTransaction,
        member_id: u64,
        alarm: i32,
    ) -> Result<Option<(AlarmMember, bool)>, ServerError> {
        let removed = {
            let mut g = self.raised.write();
            let removed = g.remove(&(alarm, member_id));
            self.refresh(&g);
            removed
        };
        if !removed {
            return Ok(None);
        }
        wtx.open_table(ALARMS).map_err(storage_err)?.remove((member_id, alarm)).map_err(storage_err)?;
        Ok(Some((member(alarm, member_id), self.get(alarm).is_empty())))
    }

    /// What etcd's Status reports per alarm (the protobuf text form of the AlarmMember).
    pub fn status_errors(&self) -> Vec<String> {
        self.get(AlarmType::None as i32)
            .iter()
            .map(|m| {
                let name = AlarmType::try_from(m.alarm).map(|a| a.as_str_name()).unwrap_or("UNKNOWN");
                format!("memberID:{} alarm:{name} ", m.member_id)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_are_raised_once_cleared_and_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let db = redb::Database::create(tmp.path().join("db")).unwrap();
        let alarms = Alarms::load(&db).unwrap();
        let nospace = AlarmType::Nospace as i32;
        let wtx = db.begin_write().unwrap();
        assert_eq!(alarms.activate(&wtx, 7, nospace).unwrap(), (member(nospace, 7), true));
        assert_eq!(alarms.activate(&wtx, 7, nospace).unwrap(), (member(nospace, 7), false));
        assert_eq!(alarms.activate(&wtx, 3, nospace).unwrap(), (member(nospace, 3), false));
        wtx.commit().unwrap();
        assert!(alarms.no_space());
        assert_eq!(alarms.get(AlarmType::None as i32), [member(nospace, 3), member(nospace, 7)]);
        assert!(alarms.get(AlarmType::Corrupt as i32).is_empty());
        assert!(!alarms.corrupt());
        assert_eq!(alarms.status_errors(), ["memberID:3 alarm:NOSPACE ", "memberID:7 alarm:NOSPACE "]);

        let reloaded = Alarms::load(&db).unwrap();
        assert_eq!(reloaded.get(AlarmType::None as i32), alarms.get(AlarmType::None as i32));

        let wtx = db.begin_write().unwrap();
        assert_eq!(alarms.deactivate(&wtx, 9, nospace).unwrap(), None);
        assert_eq!(alarms.deactivate(&wtx, 3, nospace).unwrap(), Some((member(nospace, 3), false)));
        assert_eq!(alarms.deactivate(&wtx, 7, nospace).unwrap(), Some((member(nospace, 7), true)));
        wtx.commit().unwrap();
        assert!(!alarms.no_space());
        assert!(Alarms::load(&db).unwrap().get(AlarmType::None as i32).is_empty());

        let corrupt = AlarmType::Corrupt as i32;
        let wtx = db.begin_write().unwrap();
        alarms.activate(&wtx, 0, corrupt).unwrap();
        wtx.commit().unwrap();
        assert!(alarms.corrupt() && !alarms.no_space());
        assert!(Alarms::load(&db).unwrap().corrupt());
        assert_eq!(alarms.status_errors(), ["memberID:0 alarm:CORRUPT "]);
    }
}
