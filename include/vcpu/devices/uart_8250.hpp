#pragma once
/// \file
/// An 8250/16550A UART (the PC's COM ports) as a `BusDevice` for a port bus.
///
/// Registers follow the TI/National PC16550D datasheet, "Register
/// Description" (Table II "Summary of Accessible Registers"): offsets 0..7
/// from the base (COM1: 0x3f8, IRQ 4), with DLAB (LCR bit 7) switching
/// offsets 0/1 to the divisor latch. Transmission is instantaneous: a byte
/// written to THR goes straight to the `Sink`, so LSR always shows THRE and
/// TEMT, and the THRE interrupt (IIR = 0x02) is pending whenever IER.ETBEI is
/// set and has not been acknowledged by an IIR read or a THR write.
/// Received bytes (`receive`) go through a 16-byte FIFO.
///
/// The interrupt line is driven through `Irq`: `irq(bool level)` is called
/// whenever the "interrupt pending" state changes (a KVM VMM calls
/// `KVM_IRQ_LINE` for GSI 4). Like QEMU and kvmtool, the line follows the
/// pending state; MCR.OUT2 is stored and loops back, not used as a gate.
///
/// Save/restore (`save` / `load`, record "U550", vcpu/devices/device_state.hpp): every
/// register (divisor latch, IER, LCR, MCR, SCR, FCR's FIFO enable), the receive FIFO's bytes in
/// order, the pending THRE / overrun conditions (IIR and LSR follow from them), the interrupt
/// line level and the transmitted-byte count. `load` does not call `Irq`; `sync_irq` drives the
/// line to the loaded level (KVM's per-source line level is not part of KVM_GET_IRQCHIP).

#include <vcpu/config.hpp>
#include <vcpu/devices/device_state.hpp>
#include <vcpu/result.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace vcpu::devices {

/// Register offsets from the UART base (PC16550D Table II).
enum class uart_reg : std::uint8_t {
    rbr_thr_dll = 0, ///< RBR (read), THR (write); DLL when LCR.DLAB = 1
    ier_dlm = 1,     ///< IER; DLM when LCR.DLAB = 1
    iir_fcr = 2,     ///< IIR (read), FCR (write)
    lcr = 3,         ///< line control
    mcr = 4,         ///< modem control
    lsr = 5,         ///< line status
    msr = 6,         ///< modem status
    scr = 7,         ///< scratch
};

/// Register bits (PC16550D "Register Description", 8.1-8.9).
namespace uart_bits {
// IER
inline constexpr std::uint8_t ier_erbfi = 0x01; ///< received data available interrupt
inline constexpr std::uint8_t ier_etbei = 0x02; ///< THR empty interrupt
inline constexpr std::uint8_t ier_elsi = 0x04;  ///< receiver line status interrupt
inline constexpr std::uint8_t ier_edssi = 0x08; ///< modem status interrupt
inline constexpr std::uint8_t ier_mask = 0x0f;  ///< every IER bit
// IIR (bits 3..0 identify the source; bit 0 set = nothing pending)
inline constexpr std::uint8_t iir_none = 0x01;  ///< no interrupt pending
inline constexpr std::uint8_t iir_msr = 0x00;  ///< modem status change (lowest priority)
inline constexpr std::uint8_t iir_thre = 0x02;  ///< THR empty
inline constexpr std::uint8_t iir_rda = 0x04;  ///< received data available
inline constexpr std::uint8_t iir_rls = 0x06;  ///< receiver line status (highest priority)
inline constexpr std::uint8_t iir_fifo_enabled = 0xc0; ///< bits 7:6 when FCR bit 0 is set
// FCR
inline constexpr std::uint8_t fcr_enable = 0x01;  ///< enable the FIFOs
inline constexpr std::uint8_t fcr_clear_rx = 0x02;  ///< clear the receive FIFO
inline constexpr std::uint8_t fcr_clear_tx = 0x04;  ///< clear the transmit FIFO
// LCR
inline constexpr std::uint8_t lcr_dlab = 0x80;  ///< divisor latch access: offsets 0/1 reach the divisor
// MCR
inline constexpr std::uint8_t mcr_dtr = 0x01;  ///< data terminal ready
inline constexpr std::uint8_t mcr_rts = 0x02;  ///< request to send
inline constexpr std::uint8_t mcr_out1 = 0x04;  ///< OUT1
inline constexpr std::uint8_t mcr_out2 = 0x08;  ///< OUT2 (kept; this model does not gate the interrupt with it)
inline constexpr std::uint8_t mcr_loop = 0x10;  ///< loopback mode
inline constexpr std::uint8_t mcr_mask = 0x1f;  ///< every MCR bit
// LSR
inline constexpr std::uint8_t lsr_dr = 0x01;   ///< data ready
inline constexpr std::uint8_t lsr_oe = 0x02;   ///< overrun error
inline constexpr std::uint8_t lsr_thre = 0x20; ///< THR empty
inline constexpr std::uint8_t lsr_temt = 0x40; ///< transmitter empty
// MSR
inline constexpr std::uint8_t msr_cts = 0x10;  ///< clear to send
inline constexpr std::uint8_t msr_dsr = 0x20;  ///< data set ready
inline constexpr std::uint8_t msr_ri = 0x40;  ///< ring indicator
inline constexpr std::uint8_t msr_dcd = 0x80;  ///< data carrier detect
} // namespace uart_bits

/// The PC's first serial port (COM1): I/O base 0x3f8, 8 ports, ISA IRQ 4.
inline constexpr std::uint16_t com1_base = 0x3f8;
/// COM1's ISA interrupt line.
inline constexpr std::uint16_t com1_irq = 4;
/// Ports of a UART (base .. base + 7).
inline constexpr std::uint16_t uart_ports = 8;

/// A sink that drops output (the default `Sink`).
struct null_sink {
    /// Drops the byte.
    constexpr void operator()(std::uint8_t) const noexcept {}
};
/// An IRQ line that goes nowhere (the default `Irq`).
struct null_irq {
    /// Ignores the level.
    constexpr void operator()(bool) const noexcept {}
};

/// A 16550A. `Sink` is called with each transmitted byte; `Irq` with the new
/// interrupt level when it changes. Both are held by value.
template <class Sink = null_sink, class Irq = null_irq>
class uart_8250 {
public:
    static constexpr std::size_t fifo_size = 16; ///< 16550A receive FIFO depth

    uart_8250() = default;
    /// A UART sending output bytes to `s` and its interrupt level to `i`.
    explicit uart_8250(Sink s, Irq i = {}) : sink_(static_cast<Sink&&>(s)), irq_(static_cast<Irq&&>(i)) {}

    /// Port read at `offset` (0..7). Side effects per the datasheet: RBR pops
    /// the FIFO, IIR acknowledges a THRE interrupt, LSR clears OE.
    std::uint8_t read(std::uint64_t offset, std::uint8_t /*size*/) noexcept {
        using namespace uart_bits;
        std::uint8_t v = 0;
        switch (static_cast<uart_reg>(offset & 7)) {
        case uart_reg::rbr_thr_dll:
            if (lcr_ & lcr_dlab) {
                v = static_cast<std::uint8_t>(divisor_ & 0xff);
            } else {
                v = pop();
            }
            break;
        case uart_reg::ier_dlm:
            v = (lcr_ & lcr_dlab) ? static_cast<std::uint8_t>(divisor_ >> 8) : ier_;
            break;
        case uart_reg::iir_fcr:
            v = static_cast<std::uint8_t>(iir() | (fifo_enabled_ ? iir_fifo_enabled : 0));
            // Reading IIR while THRE is the reported source clears it (8.5).
            if ((iir() & 0x0f) == iir_thre) thre_pending_ = false;
            break;
        case uart_reg::lcr: v = lcr_; break;
        case uart_reg::mcr: v = mcr_; break;
        case uart_reg::lsr:
            v = static_cast<std::uint8_t>(lsr_thre | lsr_temt | (count_ ? lsr_dr : 0) |
                                          (overrun_ ? lsr_oe : 0));
            overrun_ = false;
            break;
        case uart_reg::msr: v = msr(); break;
        case uart_reg::scr: v = scr_; break;
        }
        update_irq();
        return v;
    }

    /// Port write at `offset` (0..7).
    void write(std::uint64_t offset, std::uint8_t /*size*/, std::uint64_t value) noexcept {
        using namespace uart_bits;
        const auto b = static_cast<std::uint8_t>(value & 0xff);
        switch (static_cast<uart_reg>(offset & 7)) {
        case uart_reg::rbr_thr_dll:
            if (lcr_ & lcr_dlab) {
                divisor_ = static_cast<std::uint16_t>((divisor_ & 0xff00) | b);
            } else {
                if (mcr_ & mcr_loop) push(b); // loopback: TSR feeds RSR (8.6)
                else sink_(b);
                ++transmitted_;
                thre_pending_ = true; // THR empties at once
            }
            break;
        case uart_reg::ier_dlm:
            if (lcr_ & lcr_dlab) {
                divisor_ = static_cast<std::uint16_t>((divisor_ & 0x00ff) | (b << 8));
            } else {
                const bool was = ier_ & ier_etbei;
                ier_ = b & ier_mask;
                // Enabling ETBEI with THR empty raises THRE at once.
                if (!was && (ier_ & ier_etbei)) thre_pending_ = true;
            }
            break;
        case uart_reg::iir_fcr:
            fifo_enabled_ = b & fcr_enable;
            if (b & fcr_clear_rx) count_ = head_ = 0;
            break;
        case uart_reg::lcr: lcr_ = b; break;
        case uart_reg::mcr: mcr_ = b & mcr_mask; break;
        case uart_reg::lsr: break; // read-only in practice (factory test)
        case uart_reg::msr: break;
        case uart_reg::scr: scr_ = b; break;
        }
        update_irq();
    }

    /// A byte arrives on the line (from the VMM's stdin). Returns false and
    /// sets LSR.OE when the FIFO is full.
    bool receive(std::uint8_t b) noexcept {
        const bool ok = push(b);
        update_irq();
        return ok;
    }

    /// Current IIR source bits (without the FIFO bits), highest priority
    /// first: RLS, RDA, THRE, MSR (PC16550D Table IV).
    [[nodiscard]] std::uint8_t iir() const noexcept {
        using namespace uart_bits;
        if ((ier_ & ier_elsi) && overrun_) return iir_rls;
        if ((ier_ & ier_erbfi) && count_ > 0) return iir_rda;
        if ((ier_ & ier_etbei) && thre_pending_) return iir_thre;
        return iir_none;
    }
    /// The current interrupt output level.
    [[nodiscard]] bool irq_level() const noexcept { return level_; }
    /// The baud-rate divisor the guest programmed (DLL/DLM).
    [[nodiscard]] std::uint16_t divisor() const noexcept { return divisor_; }
    /// Bytes transmitted so far.
    [[nodiscard]] std::uint64_t transmitted() const noexcept { return transmitted_; }
    /// Received bytes waiting in the FIFO.
    [[nodiscard]] std::size_t rx_pending() const noexcept { return count_; }
    /// The output sink.
    [[nodiscard]] Sink& sink() noexcept { return sink_; }
    /// The IRQ policy.
    [[nodiscard]] Irq& irq() noexcept { return irq_; }

    /// Version of the state `save` writes (record tag "U550").
    static constexpr std::uint16_t state_version = 1;

    /// Appends this UART's state as one record (device_state.hpp) to `out`.
    void save(std::vector<std::byte>& out) const {
        const auto at = begin_device_record(out, "U550", state_version);
        state_writer w(out);
        w.u16(divisor_);
        w.u8(ier_);
        w.u8(lcr_);
        w.u8(mcr_);
        w.u8(scr_);
        w.flag(fifo_enabled_);
        w.flag(thre_pending_);
        w.flag(overrun_);
        w.flag(level_);
        w.u64(transmitted_);
        w.u8(static_cast<std::uint8_t>(count_));
        for (std::size_t i = 0; i < count_; ++i) w.u8(fifo_[(head_ + i) % fifo_size]);
        end_device_record(out, at);
    }

    /// Loads a record `save` wrote; on error (truncated, corrupt, another device's record,
    /// another version, a value no register can hold) the UART is unchanged. Does not call
    /// `Irq` (see `sync_irq`).
    [[nodiscard]] result<void> load(std::span<const std::byte> record) noexcept {
        constexpr const char* op = "uart_8250::load";
        std::uint16_t version = 0;
        auto body = open_device_record(record, op, "U550", state_version, version);
        if (!body) return body.err();
        state_reader r(*body);
        const auto divisor = r.u16();
        const auto ier = r.u8(), lcr = r.u8(), mcr = r.u8(), scr = r.u8();
        const bool fifo_enabled = r.flag(), thre = r.flag(), overrun = r.flag(), level = r.flag();
        const auto transmitted = r.u64();
        const auto count = r.u8();
        std::array<std::uint8_t, fifo_size> fifo{};
        if (count > fifo_size)
            return error{op, EINVAL, "bad value: more bytes in the receive FIFO than it holds"}.with("count", count).with(
                "fifo_size", fifo_size);
        r.bytes(std::span(fifo.data(), count));
        if (auto f = finish_device_record(r, op); !f) return f.err();
        if ((ier & ~uart_bits::ier_mask) != 0)
            return error{op, EINVAL, "bad value: IER has bits the 16550A does not have"}.with_hex("ier", ier);
        if ((mcr & ~uart_bits::mcr_mask) != 0)
            return error{op, EINVAL, "bad value: MCR has bits the 16550A does not have"}.with_hex("mcr", mcr);
        const bool pending = ((ier & uart_bits::ier_elsi) && overrun) || ((ier & uart_bits::ier_erbfi) && count > 0) ||
                             ((ier & uart_bits::ier_etbei) && thre);
        if (pending != level)
            return error{op, EINVAL, "bad value: the interrupt level contradicts IER and the pending conditions"}
                .with("level", level)
                .with_hex("ier", ier);
        divisor_ = divisor;
        ier_ = ier;
        lcr_ = lcr;
        mcr_ = mcr;
        scr_ = scr;
        fifo_enabled_ = fifo_enabled;
        thre_pending_ = thre;
        overrun_ = overrun;
        level_ = level;
        transmitted_ = transmitted;
        fifo_ = fifo;
        head_ = 0;
        count_ = count;
        return ok();
    }

    /// Drives the interrupt line to the current level through `Irq` (after `load`, once the
    /// interrupt controller is ready).
    void sync_irq() noexcept { irq_(level_); }

private:
    [[nodiscard]] std::uint8_t msr() const noexcept {
        using namespace uart_bits;
        if (mcr_ & mcr_loop) { // loopback: outputs feed the modem inputs (8.6)
            std::uint8_t v = 0;
            if (mcr_ & mcr_rts) v |= msr_cts;
            if (mcr_ & mcr_dtr) v |= msr_dsr;
            if (mcr_ & mcr_out1) v |= msr_ri;
            if (mcr_ & mcr_out2) v |= msr_dcd;
            return v;
        }
        return msr_dcd | msr_dsr | msr_cts; // a terminal is always connected
    }
    bool push(std::uint8_t b) noexcept {
        if (count_ == fifo_size) {
            overrun_ = true;
            return false;
        }
        fifo_[(head_ + count_) % fifo_size] = b;
        ++count_;
        return true;
    }
    std::uint8_t pop() noexcept {
        if (count_ == 0) return 0;
        const std::uint8_t b = fifo_[head_];
        head_ = (head_ + 1) % fifo_size;
        --count_;
        return b;
    }
    void update_irq() noexcept {
        const bool level = iir() != uart_bits::iir_none;
        if (level != level_) {
            level_ = level;
            irq_(level);
        }
    }

    [[no_unique_address]] Sink sink_{};
    [[no_unique_address]] Irq irq_{};
    std::array<std::uint8_t, fifo_size> fifo_{};
    std::size_t head_ = 0, count_ = 0;
    std::uint64_t transmitted_ = 0;
    std::uint16_t divisor_ = 12; // 9600 baud from the 1.8432 MHz clock
    std::uint8_t ier_ = 0, lcr_ = 0x03, mcr_ = 0, scr_ = 0;
    bool fifo_enabled_ = false, thre_pending_ = false, overrun_ = false, level_ = false;
};

} // namespace vcpu::devices
