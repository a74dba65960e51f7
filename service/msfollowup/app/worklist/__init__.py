"""Modality Worklist: the next due exam as a Scheduled Procedure Step, served by C-FIND, closed by MPPS.

One open step per patient and purpose (brain / spine). The full MWL identifier of a step is stored as
binary DICOM; the keys modalities really query (station AE, date, patient name/ID, accession, status)
are columns, so the SQL narrows the candidates and Python applies the exact PS3.4 C.2.2.2 matching to
the few left.

MPPS (N-CREATE / N-SET) tracks what the modality performed: COMPLETED closes the step and asks the
completion loop to finish the referenced study now instead of waiting for `stable_seconds`.

Departments with their own worklist server get every open step as a DCMTK/Orthanc `.wl` file.

Modules: `model` (vocabulary, tables), `scheduling` (items from due exams), `closing`, `matching`
(PS3.4 matching, pure), `find` (SQL + matching), `mpps`, `scp` (DIMSE handlers), `export`.
This package re-exports the names the rest of the service uses.
"""

from msfollowup.app.worklist.closing import StudyLike, cancel, close_for_study
from msfollowup.app.worklist.export import (
    export_uid,
    locked_folder,
    remove_wl,
    sync_export,
    write_wl,
)
from msfollowup.app.worklist.find import find, sql_filter
from msfollowup.followup.matching import (
    CompiledQuery,
    Condition,
    Projection,
    QueryError,
    check_lengths,
    compile_query,
    fold_name,
    parse_condition,
    response_charset,
)
from msfollowup.db.worklist import (
    COMPLETED,
    DEFAULT_START_TIME,
    DISCONTINUED,
    PPS_COMPLETED,
    PPS_DISCONTINUED,
    PPS_IN_PROGRESS,
    SCHEDULED,
    ST_IDENTIFIER_MISMATCH,
    ST_UNABLE_TO_PROCESS,
    STARTED,
    SUPPORTED_CONTEXTS,
    Code,
    Demographics,
    DemographicsLike,
    PerformedStep,
    PerformedStepInstance,
    PerformedStepStudy,
    ScheduledStep,
    WorklistError,
    completion_requested,
    decode_identifier,
    encode_identifier,
    mpps_completed,
    name_key,
    open_items,
)
from msfollowup.app.worklist.mpps import create_mpps, set_mpps
from msfollowup.app.worklist.scheduling import (
    build_identifier,
    expire,
    merge_demographics,
    move_overdue_to_today,
    schedule_due,
)

__all__ = [
    "COMPLETED", "DEFAULT_START_TIME", "DISCONTINUED", "PPS_COMPLETED", "PPS_DISCONTINUED", "PPS_IN_PROGRESS",
    "SCHEDULED", "STARTED", "ST_IDENTIFIER_MISMATCH", "ST_UNABLE_TO_PROCESS", "SUPPORTED_CONTEXTS",
    "Code", "CompiledQuery", "StudyLike", "cancel", "export_uid", "merge_demographics",
    "move_overdue_to_today", "Condition", "Demographics", "DemographicsLike", "PerformedStep",
    "PerformedStepInstance", "PerformedStepStudy", "Projection", "QueryError", "ScheduledStep", "WorklistError",
    "build_identifier", "check_lengths", "close_for_study", "compile_query", "completion_requested",
    "create_mpps", "decode_identifier", "encode_identifier", "expire", "find", "fold_name",
    "locked_folder", "mpps_completed", "name_key", "open_items", "parse_condition", "remove_wl",
    "response_charset", "schedule_due", "set_mpps", "sql_filter", "sync_export", "write_wl",
]
