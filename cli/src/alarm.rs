//! `alarm list|disarm`, with etcdctl's output (`memberID:<id> alarm:<TYPE>` per alarm).

use conclave_client::proto::{AlarmMember, AlarmType};
use serde_json::{Value, json};

use crate::output::{Obj, emit};
use crate::{Ctx, Failure};

#[derive(clap::Subcommand)]
pub enum AlarmCommand {
    /// Lists the raised alarms.
    List,
    /// Clears every raised alarm (NOSPACE also clears by itself once there is room again).
    Disarm,
}

fn line(a: &AlarmMember) -> String {
    let kind = AlarmType::try_from(a.alarm).map_or("UNKNOWN", |t| t.as_str_name());
    format!("memberID:{} alarm:{kind}", a.member_id)
}

fn to_json(alarms: &[AlarmMember]) -> Value {
    let list: Vec<Value> = alarms
        .iter()
        .map(|a| {
            Obj::new()
                .uint("memberID", a.member_id)
                .value("alarm", json!(a.alarm))
                .build()
        })
        .collect();
    json!({ "alarms": list })
}

pub async fn run(ctx: &Ctx, cmd: AlarmCommand) -> Result<(), Failure> {
    let alarms = match cmd {
        AlarmCommand::List => ctx.client.maintenance().alarm_list().await?.alarms,
        AlarmCommand::Disarm => ctx.client.maintenance().alarm_disarm().await?,
    };
    let lines = alarms.iter().map(line).collect();
    emit(ctx.format, lines, to_json(&alarms), None);
    Ok(())
}
