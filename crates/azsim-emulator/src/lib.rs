//! A local Azure IoT Hub (work in progress).
