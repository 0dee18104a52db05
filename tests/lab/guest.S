# The lab server: a BIOS boot sector (sector 0), its boot-counter sector
# (sector 1) and a code sector (sector 2, loaded at 0x8000 by the boot
# sector), assembled with GNU as and linked to a flat binary at 0x7c00.
#
# At boot it reads the counter from sector 1 (int 13h), adds one, writes it
# back and shows on the VGA text console, mirrored to COM1:
#
#   POSTERN LAB SERVER
#   BOOT COUNT: <n>
#   DISK: PRISTINE          (the counter was 0 before this boot; else USED)
#   POWER: ON, ACPI BUTTON ARMED
#
# Then it shows a prompt, "> ", and sleeps (hlt; the BIOS timer wakes it
# 18 times a second). Each time it wakes it takes the keys typed on the
# keyboard (BIOS int 16h) and the characters received on COM1 (polled,
# FIFO on) and echoes them, on the screen and on COM1; Enter shows the line
# as "TYPED: <line>" and a new prompt; rows 8-24 scroll up as they fill,
# like a terminal's. A left click of the PS/2 mouse (BIOS
# int 15h pointing-device services) shows "MOUSE: LEFT BUTTON". It also
# polls the ACPI PM1a status register for PWRBTN_STS. On the power button it
# says so and powers off: SLP_TYP = 0 (S5 on QEMU's PIIX4) | SLP_EN into
# PM1a_CNT. The PM I/O base is read from the PIIX4 power-management
# function (PCI 00:01.3, register 0x40); 0x600, where SeaBIOS puts it, if
# that reads as nothing.

        .code16
        .intel_syntax noprefix
        .text
        .globl _start

        .equ VGA_SEG,       0xb800
        .equ ATTR,          0x1f        # white on blue
        .equ COM1,          0x3f8
        .equ PWRBTN,        0x0100      # PM1_STS bit 8 / PM1_EN bit 8
        .equ SLP_EN,        0x2000      # PM1_CNT bit 13; SLP_TYP (bits 10-12) = 0

_start:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     ss, ax
        mov     sp, 0x7c00
        .byte   0xea                    # far jump to 0000:main (normalises CS)
        .word   main, 0

main:
        sti
        mov     [drive], dl
        # The code sector: CHS 0/0/3 to 0x8000, right after the counter.
        xor     ax, ax
        mov     es, ax
        mov     bx, offset ext
        mov     ax, 0x0201
        mov     cx, 0x0003
        xor     dh, dh
        int     0x13
        mov     ax, 0x0003              # 80x25 colour text; clears the screen
        int     0x10
        mov     ah, 0x01                # no cursor
        mov     cx, 0x2000
        int     0x10
        call    paint

        mov     si, offset title
        call    puts

        # Counter: read sector 1 (CHS 0/0/2), add one, write it back.
        mov     ax, 0x0201
        call    disk
        jc      disk_error
        mov     ax, [counter]
        mov     [before], ax
        inc     ax
        mov     [counter], ax
        mov     ax, 0x0301
        call    disk
        jc      disk_error

        mov     si, offset count_label
        call    put
        mov     ax, [counter]
        call    putdec
        call    newline
        mov     si, offset pristine
        cmp     word ptr [before], 0
        je      1f
        mov     si, offset used
1:      call    puts
        jmp     acpi

disk_error:
        mov     si, offset disk_failed
        call    puts

acpi:
        # PM I/O base from PCI 00:01.3 register 0x40.
        mov     eax, 0x80000b40
        mov     dx, 0xcf8
        out     dx, eax
        mov     dx, 0xcfc
        in      eax, dx
        and     ax, 0xffc0
        jnz     1f
        mov     ax, 0x0600
1:      mov     [pmbase], ax
        mov     dx, ax
        mov     ax, PWRBTN
        out     dx, ax                  # PM1a_STS: clear a stale button press
        add     dx, 2
        out     dx, ax                  # PM1a_EN: power button enabled
        mov     si, offset armed
        call    puts

        jmp     console

halt:
        cli
        hlt
        jmp     halt

# Reads (ah = 2) or writes (ah = 3) one sector, CHS 0/0/2, at `counter`.
# Sets CF on failure.
disk:
        push    ax
        xor     ax, ax
        mov     es, ax
        pop     ax
        mov     bx, offset counter
        mov     cx, 0x0002
        xor     dh, dh
        mov     dl, [drive]
        int     0x13
        ret

# Fills the screen with blanks in ATTR.
paint:
        mov     ax, VGA_SEG
        mov     es, ax
        xor     di, di
        mov     ax, (ATTR << 8) | ' '
        mov     cx, 80 * 25
        rep     stosw
        mov     word ptr [pos], 2 * 80 * 2 + 4      # row 2, column 2
        ret

# put: writes the NUL-terminated string at si at pos, and to COM1.
# puts: the same, then a new line.
puts:
        call    put
newline:
        mov     ax, [pos]
        xor     dx, dx
        mov     bx, 160
        div     bx
        inc     ax
        mul     bx
        add     ax, 4
        mov     [pos], ax
        call    scroll
        mov     al, 13
        call    serial
        mov     al, 10
        jmp     serial
put:
        mov     ax, VGA_SEG
        mov     es, ax
1:      lodsb
        test    al, al
        jz      2f
        call    putc
        jmp     1b
2:      ret

# Writes al at pos and to COM1.
putc:
        mov     di, [pos]
        mov     ah, ATTR
        stosw
        mov     [pos], di
# Writes al to COM1 once its transmitter is ready.
serial:
        push    ax
        mov     dx, COM1 + 5
1:      in      al, dx
        test    al, 0x20
        jz      1b
        pop     ax
        mov     dx, COM1
        out     dx, al
        ret

# Writes ax in decimal.
putdec:
        mov     bx, 10
        xor     cx, cx
1:      xor     dx, dx
        div     bx
        push    dx
        inc     cx
        test    ax, ax
        jnz     1b
2:      pop     ax
        add     al, '0'
        push    cx
        push    ax
        mov     ax, VGA_SEG
        mov     es, ax
        pop     ax
        call    putc
        pop     cx
        loop    2b
        ret

title:       .asciz "POSTERN LAB SERVER"
count_label: .asciz "BOOT COUNT: "
pristine:    .asciz "DISK: PRISTINE"
used:        .asciz "DISK: USED"
disk_failed: .asciz "DISK: ERROR"
armed:       .asciz "POWER: ON, ACPI BUTTON ARMED"

drive:       .byte 0
pmbase:      .word 0
before:      .word 0
pos:         .word 0

        .org    510
        .word   0xaa55

# Sector 1: the boot counter (a 16-bit count, then zeros).
counter:
        .word   0
        .org    1024

# Sector 2: the console loop, loaded at 0x8000.
ext:
console:
        mov     dx, COM1 + 2            # FCR: FIFO on, both FIFOs cleared
        mov     al, 0x07
        out     dx, al
        call    mouse_init
        call    prompt

wait_event:
        sti
        hlt
        mov     ah, 0x01                # a key in the BIOS keyboard buffer?
        int     0x16
        jz      1f
        xor     ah, ah
        int     0x16
        call    key
        jmp     wait_event
1:      mov     dx, COM1 + 5            # LSR: data ready?
        in      al, dx
        test    al, 0x01
        jz      2f
        mov     dx, COM1
        in      al, dx
        call    key
        jmp     1b
2:      cmp     byte ptr [clicked], 0
        je      3f
        mov     byte ptr [clicked], 0
        call    newline
        mov     si, offset mouse_msg
        call    puts
        call    prompt
3:      mov     dx, [pmbase]
        in      ax, dx
        test    ax, PWRBTN
        jz      wait_event

        call    newline
        mov     si, offset pressed
        call    puts
        mov     dx, [pmbase]
        mov     ax, PWRBTN
        out     dx, ax
        add     dx, 4                   # PM1a_CNT
        in      ax, dx
        and     ax, 0xc3ff              # SLP_TYP = 0
        or      ax, SLP_EN
        out     dx, ax
        jmp     halt

# One character in al, from either source: printable ASCII is echoed and
# kept (up to LINE_MAX); CR ends the line.
key:
        cmp     al, 13
        je      enter
        cmp     al, ' '
        jb      9f
        cmp     al, '~'
        ja      9f
        mov     bx, [len]
        cmp     bx, LINE_MAX
        jae     9f
        mov     [line + bx], al
        inc     word ptr [len]
        mov     bx, VGA_SEG
        mov     es, bx
        jmp     putc
9:      ret
enter:
        call    newline
        mov     si, offset typed
        call    put
        mov     bx, [len]
        mov     byte ptr [line + bx], 0
        mov     word ptr [len], 0
        mov     si, offset line
        call    puts
# Shows the prompt.
prompt:
        mov     si, offset prompt_msg
        jmp     put

# Keeps the typing area (rows 8-24) going like a terminal's: a new line
# past the last row moves rows 9-24 up by one and blanks row 24.
scroll:
        cmp     word ptr [pos], 25 * 160
        jb      1f
        push    ds
        push    es
        cld
        mov     ax, VGA_SEG
        mov     ds, ax
        mov     es, ax
        mov     si, 9 * 160
        mov     di, 8 * 160
        mov     cx, 16 * 80
        rep     movsw
        mov     ax, (ATTR << 8) | ' '
        mov     cx, 80
        rep     stosw
        pop     es
        pop     ds
        sub     word ptr [pos], 160
1:      ret

# PS/2 mouse through the BIOS: initialise, handler, enable. Nothing happens if
# the BIOS has no pointing device.
mouse_init:
        mov     ax, 0xc205              # initialise, 3-byte packets (this
        mov     bh, 3                   # forgets any handler: it comes first)
        int     0x15
        jc      1f
        push    cs
        pop     es
        mov     bx, offset mouse_handler
        mov     ax, 0xc207              # set the device handler (ES:BX)
        int     0x15
        jc      1f
        mov     ax, 0xc200              # enable
        mov     bh, 1
        int     0x15
1:      ret

# Called by the BIOS for each mouse packet, far, with the status byte at
# [sp+10] (after the return address and three other words).
mouse_handler:
        push    bp
        mov     bp, sp
        test    byte ptr [bp + 12], 0x01
        jz      1f
        mov     byte ptr cs:[clicked], 1
1:      pop     bp
        lret

        .equ LINE_MAX, 64
prompt_msg:  .asciz "> "
typed:       .asciz "TYPED: "
mouse_msg:   .asciz "MOUSE: LEFT BUTTON"
pressed:     .asciz "POWER BUTTON PRESSED: POWERING OFF"
clicked:     .byte 0
len:         .word 0
line:        .space LINE_MAX + 1
        .org    1536
