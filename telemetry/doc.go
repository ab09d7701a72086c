// Package telemetry is drover's wire format: the protobuf schema (telemetry.proto, package
// drover.telemetry.v1) of the frames devices exchange with frontends (Uplink, Downlink) and of
// the batches that travel inside the pipeline (Batch from frontend to router, PublishBatch from
// router to subscribers), its JSON mapping, and the validation every device frame passes before
// anything in it is stored.
//
// Devices send Uplink frames, as binary protobuf (WebSocket binary messages) or in the proto3
// JSON mapping (text messages). A frontend decodes them with DecodeUplink, which refuses a whole
// frame with a *FrameError when any part of it is malformed or out of range: a frame is stored
// whole or not at all. For binary frames of readings the frontend first tries ScanUplink, the
// same rules applied to the wire bytes without decoding (it is sure or leaves the frame to
// DecodeUplink, never refuses on its own), and stores each reading's bytes as received
// (AppendRecords); a router republishes records the same way (WalkBatchRecords,
// AppendPublishBatch), so a reading is decoded only by the sinks that need its fields. The device side (and drover's simulator) builds frames with EncodeUplink
// and reads the frontend's answers with DecodeDownlink.
//
// Validation is the one definition of what drover stores: a reading that passes it is stored
// unchanged by every sink (the InfluxDB writer and the Parquet lake), and whatever a sink would
// refuse or alter is refused here, before the device gets an ack. So seq stops at MaxSeq
// (2^63−1, the sinks' signed integers), time_ms at [MinTimeMs, MaxTimeMs] (InfluxDB's time range
// once the writer adds the sequence as nanoseconds), extra keys carry no control character and
// no backslash (each becomes an InfluxDB field key), and values are finite. Names follow the same
// rule: ValidateDeviceID is the one definition of a device id and ValidateLabel of a fleet,
// vehicle class or region, which the registry enforces. docs/wire-format.md has the table.
//
// Versioning rule: fields are only ever added. A field number or name, once published, is never
// reused or renumbered, and its type and meaning never change; retired fields are reserved. A
// change that cannot follow this rule becomes a new protobuf package (drover.telemetry.v2)
// served beside v1. docs/wire-format.md describes the format for device makers.
//
// Regenerate telemetry.pb.go with scripts/gen-proto.sh after editing telemetry.proto.
package telemetry
