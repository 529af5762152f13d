# CTest driver (cmake -P): configures, builds and runs one consumer project in
# a fresh binary dir, or (MODE=install) installs tokmix into a scratch prefix.
#
# Inputs (-D): MODE (install | consumer), TOKMIX_BINARY_DIR, PREFIX,
# CONSUMER_SOURCE_DIR, CONSUMER_BINARY_DIR, TOKMIX_SOURCE_DIR, GENERATOR,
# CXX_COMPILER, BUILD_TYPE.

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}): ${ARGN}")
  endif()
endfunction()

if(MODE STREQUAL "install")
  file(REMOVE_RECURSE "${PREFIX}")
  run_step("install" "${CMAKE_COMMAND}" --install "${TOKMIX_BINARY_DIR}" --prefix "${PREFIX}")
  if(NOT EXISTS "${PREFIX}/include/tokmix/tokmix.hpp")
    message(FATAL_ERROR "install did not produce ${PREFIX}/include/tokmix/tokmix.hpp")
  endif()
  return()
endif()

# Only the pkg-config consumer reads this; harmless for the others.
set(ENV{PKG_CONFIG_PATH} "${PREFIX}/share/pkgconfig:${PREFIX}/lib/pkgconfig:$ENV{PKG_CONFIG_PATH}")

file(REMOVE_RECURSE "${CONSUMER_BINARY_DIR}")
run_step("configure" "${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${CONSUMER_BINARY_DIR}" -G "${GENERATOR}"
         "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}" "-DCMAKE_PREFIX_PATH=${PREFIX}"
         "-DTOKMIX_SOURCE_DIR=${TOKMIX_SOURCE_DIR}")
run_step("build" "${CMAKE_COMMAND}" --build "${CONSUMER_BINARY_DIR}")
run_step("run" "${CONSUMER_BINARY_DIR}/consumer")
