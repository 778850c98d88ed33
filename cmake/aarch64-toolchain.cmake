# Cross-compile normcpp for Linux aarch64 with Debian's g++-aarch64-linux-gnu; the C++ tests
# run under qemu-user (ctest uses CMAKE_CROSSCOMPILING_EMULATOR for every test command).
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-toolchain.cmake \
#         -DNORMCPP_PYTHON=OFF -DNORMCPP_TESTS=ON
# With CMAKE_SYSTEM_PROCESSOR=aarch64 the project builds its NEON kernel level.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(NORMCPP_CROSS_TRIPLE aarch64-linux-gnu CACHE STRING "Cross toolchain prefix")
set(CMAKE_C_COMPILER ${NORMCPP_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${NORMCPP_CROSS_TRIPLE}-g++)

# Debian installs the target's libraries and headers under /usr/aarch64-linux-gnu.
set(NORMCPP_CROSS_SYSROOT /usr/${NORMCPP_CROSS_TRIPLE} CACHE PATH "Target root for qemu -L")
set(CMAKE_FIND_ROOT_PATH ${NORMCPP_CROSS_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

find_program(NORMCPP_QEMU_AARCH64 qemu-aarch64)
if(NORMCPP_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${NORMCPP_QEMU_AARCH64} -L ${NORMCPP_CROSS_SYSROOT})
endif()
