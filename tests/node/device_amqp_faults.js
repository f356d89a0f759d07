// Drives azure-iot-device over AMQP (azure-iot-device-amqp) through the SDK e2e suites' AMQP
// faults against an azsim hub: for each fault the device sends the fault message (telemetry
// with AzIoTHub_FaultOperationType, as the C# e2e FaultInjection.cs composes it; not awaited:
// the hub never settles it), then a message that must be delivered once the SDK has recovered.
//
// Run by tests/it/hub_device_amqp_faults.rs; talks to it through JSON lines on stdout (one
// object per line, key "event") and never prints a key, a token or a connection string.
//
//   node device_amqp_faults.js SERVICE_CS_FILE DEVICE_ID FAULT...
'use strict';

const fs = require('fs');
const device = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');
const iothub = require('azure-iothub');

// The SDK's retry policy backs off for seconds after a lost connection.
const STEP_TIMEOUT_MS = 60000;

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields || {})) + '\n');
}

function fail(step, err) {
  emit('error', { step, name: err && err.name, message: String((err && err.message) || err) });
  process.exit(1);
}

async function step(name, fn) {
  const timer = setTimeout(() => {
    emit('timeout', { step: name });
    process.exit(1);
  }, STEP_TIMEOUT_MS);
  try {
    return await fn();
  } catch (err) {
    fail(name, err);
  } finally {
    clearTimeout(timer);
  }
}

function faultMessage(op) {
  const m = new device.Message('fault');
  m.messageId = 'fault-' + op;
  m.properties.add('AzIoTHub_FaultOperationType', op);
  m.properties.add('AzIoTHub_FaultOperationCloseReason', 'boom');
  m.properties.add('AzIoTHub_FaultOperationDelayInSecs', '0');
  m.properties.add('AzIoTHub_FaultOperationDurationInSecs', '1');
  return m;
}

async function main(csFile, deviceId, faults) {
  const serviceCs = fs.readFileSync(csFile, 'utf8').trim();
  const host = iothub.ConnectionString.parse(serviceCs).HostName;
  const registry = iothub.Registry.fromConnectionString(serviceCs);
  const created = (await step('create', () => registry.create({ deviceId }))).responseBody;
  const key = created.authentication.symmetricKey.primaryKey;
  const deviceCs = 'HostName=' + host + ';DeviceId=' + deviceId + ';SharedAccessKey=' + key;

  const client = device.Client.fromConnectionString(deviceCs, Amqp);
  client.on('error', () => {});
  await step('open', () => client.open());
  // The C2D link is attached while a message listener is registered.
  client.on('message', (m) => client.complete(m, () => {}));
  const first = new device.Message('before');
  first.messageId = 'before';
  await step('sendEvent before', () => client.sendEvent(first));
  emit('connected');

  for (const op of faults) {
    // Not awaited: the fault message is never settled (its link or connection dies first).
    const started = Date.now();
    client.sendEvent(faultMessage(op), () => {});
    // The SDK surfaces no event for most of them (it re-attaches or reconnects by itself):
    // give the fault time to land before the next message, which must be delivered either way.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const after = new device.Message('after ' + op);
    after.messageId = 'after-' + op;
    await step('sendEvent after ' + op, () => client.sendEvent(after));
    emit('recovered', { fault: op, ms: Date.now() - started });
  }
  // What is tested is the recovery above. Closing afterwards is reported, not required: with
  // the fault messages still unsettled in its send queue, azure-iot-device-amqp 1.14.4 sometimes
  // reports 'error while detaching the D2C link when disconnecting' under load (seen once in CI
  // on a busy 2-core box, not reproduced in 3 runs here; its C2D detach reports the same text).
  try {
    await client.close();
    emit('closed');
  } catch (err) {
    emit('closed', { error: String((err && err.message) || err) });
  }
  emit('done');
  // The unsettled fault messages keep the SDK's send queue (and the event loop) alive.
  process.exit(0);
}

const [csFile, deviceId, ...faults] = process.argv.slice(2);
main(csFile, deviceId, faults).catch((err) => fail('main', err));
