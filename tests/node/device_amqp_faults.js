// Drives azure-iot-device over AMQP (azure-iot-device-amqp) through the SDK e2e suites' AMQP
// faults against an azsim hub: for each fault the device sends the fault message (telemetry
// with AzIoTHub_FaultOperationType, as the C# e2e FaultInjection.cs composes it, with the suites'
// 1 s delay), which the hub accepts before the fault starts; once the fault has had time to land
// it sends a message that must be delivered once the SDK has recovered.
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

// Covers azure-iot-amqp-base's 45 s rundown timer (SRS_NODE_COMMON_AMQP_06_007: a disconnect
// whose detaches or end go unanswered is forced after 45 s) and the retry back-off after it: a
// hub whose frames leave the SDK waiting shows as a recovery of ~45 s, not as a hang.
const STEP_TIMEOUT_MS = 60000;
// The fault's delay (the SDK suites use 1 or 2 s), and how long after it the next message goes.
const FAULT_DELAY_S = 1;
const SETTLE_MS = 1000;
// The faults that end the device's links on the hub: its connection state changes (the
// registry's connectionStateUpdatedTime moves past the request), which shows the fault landed.
const ENDING = ['KillAmqpSession', 'KillAmqpConnection', 'ShutDownAmqp', 'KillTcp'];

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
  m.properties.add('AzIoTHub_FaultOperationDelayInSecs', String(FAULT_DELAY_S));
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
    // Accepted by the hub before the fault starts (over AMQP IoT Hub acknowledges it; over MQTT
    // it does not): the SDK has nothing to send again after it reconnects.
    const requested = Date.now();
    await step('sendEvent fault ' + op, () => client.sendEvent(faultMessage(op)));
    const fires = Date.now() + FAULT_DELAY_S * 1000;
    // The SDK surfaces no event for most faults (it re-attaches or reconnects by itself): give
    // the fault time to land and the SDK to notice it, then send the next message, which must
    // be delivered either way. Its latency is what the recovery took.
    await new Promise((resolve) => setTimeout(resolve, FAULT_DELAY_S * 1000 + SETTLE_MS));
    const after = new device.Message('after ' + op);
    after.messageId = 'after-' + op;
    const sent = Date.now();
    await step('sendEvent after ' + op, () => client.sendEvent(after));
    // ms: the next message's latency (a reconnect still under way shows in it); stepMs: from the
    // fault request to that message's acceptance.
    const ms = Date.now() - sent;
    const stepMs = Date.now() - requested;
    // reconnectedMs: from about when the fault fired to the device's reconnection (the hub's
    // record of it), for the faults that end its links.
    let reconnectedMs;
    if (ENDING.includes(op)) {
      const got = (await step('registry get', () => registry.get(deviceId))).responseBody;
      const updated = Date.parse(got.connectionStateUpdatedTime);
      if (!(updated >= requested)) {
        emit('error', { step: 'fault ' + op, message: 'the connection state did not change' });
        process.exit(1);
      }
      reconnectedMs = updated - fires;
    }
    emit('recovered', { fault: op, ms, stepMs, reconnectedMs });
  }
  await step('close', () => client.close());
  emit('closed');
  emit('done');
  process.exit(0);
}

const [csFile, deviceId, ...faults] = process.argv.slice(2);
main(csFile, deviceId, faults).catch((err) => fail('main', err));
