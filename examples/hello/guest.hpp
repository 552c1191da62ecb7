#pragma once
// The hello guest: 16-bit real-mode code, loaded at 0x1000 and entered with
// CS = 0, IP = 0x1000. It writes a NUL-terminated string one byte at a time
// to the debug port 0xE9, asks the VMM for a number on port 0xE9 (IN), writes
// that number plus one back (OUT, 16 bits) and halts.

#include <array>
#include <cstdint>

namespace hello {

inline constexpr std::uint16_t load_address = 0x1000;
inline constexpr std::uint16_t debug_port = 0xe9;

// Hand-assembled; each line is one instruction (NASM syntax, BITS 16).
inline constexpr std::array<std::uint8_t, 23> code{
    0xbe, 0x20, 0x10, //         mov si, message        ; 0x1020
    0xba, 0xe9, 0x00, //         mov dx, 0xe9
    0xac,             // next:   lodsb                  ; al = [ds:si++]
    0x84, 0xc0,       //         test al, al
    0x74, 0x03,       //         jz done
    0xee,             //         out dx, al             ; one exit per byte
    0xeb, 0xf8,       //         jmp next
    0xed,             // done:   in ax, dx              ; the VMM answers
    0x40,             //         inc ax
    0xef,             //         out dx, ax             ; 16-bit: answer + 1
    0xf4,             //         hlt
    0x90, 0x90, 0x90, 0x90, 0x90, // padding up to the message at 0x1020
};
static_assert(code.size() <= 0x20, "the code must end before the message at 0x1020");

inline constexpr char message[] = "Hello from a vcpu guest in real mode!\n";

} // namespace hello
