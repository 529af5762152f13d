# Install rules for the header-only library: headers, the exported
# tokmix::tokmix target with a relocatable config + version file, and a
# pkg-config file for non-CMake builds. Included by the top-level CMakeLists.txt
# when TOKMIX_INSTALL is on (the default when tokmix is the top-level project).

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# Header-only: the config files do not depend on the architecture, so they go
# under share/ (find_package searches <prefix>/share/cmake/<name>/).
set(TOKMIX_INSTALL_CMAKEDIR "${CMAKE_INSTALL_DATADIR}/cmake/tokmix" CACHE STRING
    "Where tokmixConfig.cmake is installed, relative to the prefix")
set(TOKMIX_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_DATADIR}/pkgconfig" CACHE STRING
    "Where tokmix.pc is installed, relative to the prefix")

install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/tokmix"
        DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        FILES_MATCHING PATTERN "*.hpp")

# INCLUDES DESTINATION puts the include dir into the exported interface even if
# the target's own $<INSTALL_INTERFACE:...> was declared before GNUInstallDirs.
install(TARGETS tokmix EXPORT tokmixTargets
        INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(EXPORT tokmixTargets
        NAMESPACE tokmix::
        FILE tokmixTargets.cmake
        DESTINATION "${TOKMIX_INSTALL_CMAKEDIR}")

configure_package_config_file(
  "${CMAKE_CURRENT_LIST_DIR}/tokmixConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/tokmixConfig.cmake"
  INSTALL_DESTINATION "${TOKMIX_INSTALL_CMAKEDIR}")
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/tokmixConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY SameMajorVersion
  ARCH_INDEPENDENT)
install(FILES "${PROJECT_BINARY_DIR}/tokmixConfig.cmake" "${PROJECT_BINARY_DIR}/tokmixConfigVersion.cmake"
        DESTINATION "${TOKMIX_INSTALL_CMAKEDIR}")

# pkg-config: Eigen comes through `Requires: eigen3`; xsimd's include dir is
# spelled out because not every distribution ships an xsimd.pc. System include
# dirs are left out (compilers search them anyway and pkg-config drops them).
get_target_property(_tokmix_xsimd_includes ${TOKMIX_XSIMD_TARGET} INTERFACE_INCLUDE_DIRECTORIES)
set(TOKMIX_PC_EXTRA_CFLAGS "")
if(_tokmix_xsimd_includes)
  foreach(_dir IN LISTS _tokmix_xsimd_includes)
    if(NOT _dir MATCHES "^\\$<" AND NOT _dir STREQUAL "/usr/include" AND NOT _dir STREQUAL "/usr/local/include")
      string(APPEND TOKMIX_PC_EXTRA_CFLAGS " -I${_dir}")
    endif()
  endforeach()
endif()
# The prefix is derived from the .pc file's own location so that
# `cmake --install --prefix <elsewhere>` yields a working file.
if(IS_ABSOLUTE "${TOKMIX_INSTALL_PKGCONFIGDIR}")
  set(TOKMIX_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH _tokmix_pc_up "/tokmix-root/${TOKMIX_INSTALL_PKGCONFIGDIR}" "/tokmix-root")
  set(TOKMIX_PC_PREFIX "\${pcfiledir}/${_tokmix_pc_up}")
  string(REGEX REPLACE "/$" "" TOKMIX_PC_PREFIX "${TOKMIX_PC_PREFIX}")
endif()
# An absolute CMAKE_INSTALL_INCLUDEDIR (allowed by GNUInstallDirs) is used as is.
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(TOKMIX_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(TOKMIX_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
configure_file("${CMAKE_CURRENT_LIST_DIR}/tokmix.pc.in" "${PROJECT_BINARY_DIR}/tokmix.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/tokmix.pc" DESTINATION "${TOKMIX_INSTALL_PKGCONFIGDIR}")

unset(_tokmix_xsimd_includes)
unset(_dir)
unset(_tokmix_pc_up)
