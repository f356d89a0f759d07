//! Telemetry values on the board: the chip's internal temperature sensor (esp-hal `tsens`),
//! and humidity from the same seeded random walk `azsim run` uses, since the ESP32-C3 has no
//! humidity sensor.

use azsim_proto::device::{RandomWalk, Reading, Sensor};
use esp_hal::peripherals::TSENS;
use esp_hal::tsens::{Config, TemperatureSensor};

/// The die temperature plus simulated humidity.
pub struct ChipSensor {
    tsens: Option<TemperatureSensor<'static>>,
    walk: RandomWalk,
}

impl ChipSensor {
    /// Powers the sensor up; falls back to the simulated temperature if it cannot.
    pub fn new(tsens: TSENS<'static>, seed: u64) -> Self {
        Self {
            tsens: TemperatureSensor::new(tsens, Config::default()).ok(),
            walk: RandomWalk::new(seed),
        }
    }
}

impl Sensor for ChipSensor {
    fn read(&mut self) -> Reading {
        let simulated = self.walk.read();
        Reading {
            temperature: self
                .tsens
                .as_ref()
                .map_or(simulated.temperature, |t| t.get_temperature().to_celsius()),
            humidity: simulated.humidity,
        }
    }
}
