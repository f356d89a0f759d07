#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod fw {
    use esp_backtrace as _;

    esp_bootloader_esp_idf::esp_app_desc!();

    #[esp_rtos::main]
    async fn main(_spawner: embassy_executor::Spawner) -> ! {
        let peripherals = esp_hal::init(esp_hal::Config::default());
        esp_alloc::heap_allocator!(size: 72 * 1024);
        let timg0 = esp_hal::timer::timg::TimerGroup::new(peripherals.TIMG0);
        esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);
        loop {
            embassy_time::Timer::after_secs(1).await;
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("azsim-firmware targets riscv32imc-unknown-none-elf; build it with --target");
}
